"""Checkpoint and tokenizer checks at start, both tokenizer layouts, incremental detokenizing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from inference_worker import StartupError, inspect_checkpoint
from inference_worker.tokenizer import Tokenizer

TEXT = "héllo wörld, naïve café — 東京 🙂 the end"


def test_missing_tokenizer_and_bad_tp_fail_naming_the_file_and_number(
    checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(checkpoints["opt"], bare)
    (bare / "tokenizer.json").unlink()
    with pytest.raises(StartupError, match=r"bare/tokenizer\.json not found"):
        inspect_checkpoint(bare, tp_size=1)
    (bare / "vocab.json").write_text("{}")
    with pytest.raises(StartupError, match=r"bare/merges\.txt not found"):
        inspect_checkpoint(bare, tp_size=1)
    with pytest.raises(StartupError, match=r"tensor-parallel size 3 does not divide n_head=4"):
        inspect_checkpoint(checkpoints["llama"], tp_size=3)
    with pytest.raises(StartupError, match="not a directory"):
        inspect_checkpoint(tmp_path / "nowhere", tp_size=1)


def test_gpt2_style_vocab_and_merges_byte_level(tmp_path: Path) -> None:
    inner = HFTokenizer(models.BPE())
    inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    inner.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["</s>"],
        show_progress=False,
    )
    inner.train_from_iterator(["the end of the world", "hello there"] * 5, trainer)
    inner.model.save(str(tmp_path))  # vocab.json + merges.txt, as OPT shipped them
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
    tokenizer = Tokenizer.from_dir(tmp_path, bos_token_id=0, special_ids=(0,))
    ids = tokenizer.encode(TEXT)
    assert ids[0] == 0, "tokenizer_config.json asks for a BOS"
    assert tokenizer.decode(ids) == TEXT.replace("</s>", "")

    # Multi-byte characters span several byte-level tokens: the detokenizer never emits half one.
    detok = tokenizer.detokenizer(ids[:1])
    pieces = [detok.push(t) for t in ids[1:]]
    assert "".join(pieces) == TEXT
    assert not any("\ufffd" in piece for piece in pieces)
    assert any(piece == "" for piece in pieces), "some tokens end inside a character"


def test_sentencepiece_style_keeps_the_space_before_a_continuation(checkpoints: dict[str, Path]) -> None:
    tokenizer = Tokenizer.from_dir(checkpoints["opt"])
    prompt = tokenizer.encode("the quick")
    more = tokenizer.encode("the quick brown fox")[len(prompt) :]
    detok = tokenizer.detokenizer(prompt)
    assert "".join(detok.push(t) for t in more) == " brown fox"
    assert tokenizer.token_text(more[0]) == " bro"

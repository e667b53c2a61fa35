"""Token files, packing, the deterministic sampler, and `python -m training tokenize`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import run_cli

from training.data import DataError, SequenceSampler, TokenFile, TokenFileWriter, local_batch, read_header

WORDS = ["[UNK]", "<pad>", "</s>", "hello", "world", "the", "cat", "sat", "on", "mat", "dog", "ran"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    path = tmp_path_factory.mktemp("tokenizer")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    return path


def ids(text: str) -> list[int]:
    return [WORDS.index(w) for w in text.split()]


def test_token_file_round_trip(tmp_path: Path) -> None:
    writer = TokenFileWriter(tmp_path / "a.tokens", dtype="uint16", metadata={"eos_token_id": 2})
    docs = [[3, 4, 2], [5, 6, 7, 2], [60000, 2]]
    for doc in docs:
        writer.add(doc)
    assert not (tmp_path / "a.tokens").exists()  # written under .partial until closed
    header = writer.close()
    assert header["num_tokens"] == 9 and header["num_docs"] == 3 and header["max_token_id"] == 60000
    data = TokenFile(tmp_path / "a.tokens")
    assert isinstance(data.tokens, np.memmap)
    assert data.tokens.tolist() == [t for doc in docs for t in doc]
    assert data.doc_offsets.tolist() == [0, 3, 7, 9]
    assert data.num_sequences(4) == 2  # windows of 5 tokens overlapping by one
    assert data.sequence(1, 4).tolist() == [6, 7, 2, 60000, 2]


def test_uint16_refuses_large_ids_and_truncation_is_detected(tmp_path: Path) -> None:
    writer = TokenFileWriter(tmp_path / "b.tokens", dtype="uint16")
    with pytest.raises(DataError, match="does not fit uint16"):
        writer.add([70000])
    writer.abort()
    assert not list(tmp_path.iterdir())
    writer = TokenFileWriter(tmp_path / "c.tokens", dtype="uint32")
    writer.add([70000, 2])
    writer.close()
    assert TokenFile(tmp_path / "c.tokens").tokens.tolist() == [70000, 2]
    raw = (tmp_path / "c.tokens").read_bytes()
    (tmp_path / "c.tokens").write_bytes(raw[:-4])
    with pytest.raises(DataError, match="truncated"):
        read_header(tmp_path / "c.tokens")
    (tmp_path / "d.tokens").write_text("not tokens")
    with pytest.raises(DataError, match="not a token file"):
        read_header(tmp_path / "d.tokens")


def test_sampler_is_deterministic_and_its_position_is_all_the_state() -> None:
    a, b = SequenceSampler(10, seed=3), SequenceSampler(10, seed=3)
    run = a.indices(0, 25)  # crosses two epoch boundaries
    assert run == b.indices(0, 25)
    assert sorted(run[:10]) == list(range(10)) and sorted(run[10:20]) == list(range(10))
    assert run[:10] != run[10:20]  # a new permutation each epoch
    resumed = SequenceSampler(10, seed=3)  # a fresh process that only knows the position
    assert resumed.indices(7, 18) == run[7:]
    assert SequenceSampler(10, seed=4).indices(0, 10) != run[:10]
    assert SequenceSampler(10, seed=3, shuffle=False).indices(8, 4) == [8, 9, 0, 1]


def test_data_parallel_ranks_split_the_global_batch(tmp_path: Path) -> None:
    writer = TokenFileWriter(tmp_path / "e.tokens", dtype="uint16")
    writer.add(list(range(3, 103)))
    writer.close()
    data = TokenFile(tmp_path / "e.tokens")
    sampler = SequenceSampler(data.num_sequences(8), seed=0)
    whole_in, whole_tgt = local_batch(data, sampler, position=4, global_batch=4, seq_len=8, dp_rank=0, dp_size=1)
    parts = [local_batch(data, sampler, position=4, global_batch=4, seq_len=8, dp_rank=r, dp_size=2) for r in range(2)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole_in)
    assert torch.equal(torch.cat([p[1] for p in parts]), whole_tgt)
    assert torch.equal(whole_in[:, 1:], whole_tgt[:, :-1])  # targets are the next tokens


def test_tokenize_jsonl_and_text(tmp_path: Path, tokenizer_dir: Path) -> None:
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(
        json.dumps({"text": "hello world", "id": 1}) + "\n\n" + json.dumps({"text": "the cat sat on the mat"}) + "\n"
    )
    done = run_cli("tokenize", str(jsonl), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "j.tokens"))
    assert done.returncode == 0, done.stderr
    assert "tokenize [" in done.stderr  # the progress bar
    data = TokenFile(tmp_path / "j.tokens")
    assert data.tokens.tolist() == ids("hello world </s> the cat sat on the mat </s>")
    assert data.header["eos_token_id"] == 2 and data.header["dtype"] == "uint16"
    assert data.doc_offsets.tolist() == [0, 3, 10]

    text = tmp_path / "docs.txt"
    text.write_text("the dog ran\non the mat\n\n\nhello world\n")
    done = run_cli("tokenize", str(text), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "t.tokens"))
    assert done.returncode == 0, done.stderr
    data = TokenFile(tmp_path / "t.tokens")
    assert data.tokens.tolist() == ids("the dog ran on the mat </s> hello world </s>")
    assert int(data.header["num_docs"]) == 2


@pytest.mark.parametrize(
    ("content", "line", "why"),
    [
        (b'{"text": "hello"}\n{"text": "world"}\n{"text": broken\n', 3, "not valid JSON"),
        (b'{"text": "hello"}\n{"body": "world"}\n', 2, 'string "text" field'),
        (b'{"text": "hello"}\n\n["a list"]\n', 3, 'string "text" field'),
        (b'{"text": "hello"}\n{"text": "\xff\xfe"}\n', 2, "UTF-8"),
    ],
)
def test_malformed_line_is_refused_with_its_number(
    tmp_path: Path, tokenizer_dir: Path, content: bytes, line: int, why: str
) -> None:
    source = tmp_path / "bad.jsonl"
    source.write_bytes(content)
    out = tmp_path / "bad.tokens"
    done = run_cli("tokenize", str(source), "--tokenizer", str(tokenizer_dir), "--out", str(out))
    assert done.returncode == 2
    assert f"bad.jsonl:{line}:" in done.stderr and why in done.stderr
    assert list(tmp_path.iterdir()) == [source]  # no output, not even a partial one


def test_tokenize_text_with_invalid_utf8_names_the_line(tmp_path: Path, tokenizer_dir: Path) -> None:
    source = tmp_path / "bad.txt"
    source.write_bytes(b"hello world\n\nthe cat\nsat \xc3\x28 on\n")
    done = run_cli("tokenize", str(source), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "x.tokens"))
    assert done.returncode == 2 and "bad.txt:4:" in done.stderr
    assert not (tmp_path / "x.tokens").exists()

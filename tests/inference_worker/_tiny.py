"""Tiny random checkpoints with a tokenizer of their own, made in-process (no network)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tests.hf_tiny import random_hf_model

VOCAB = 128
EOS = 2

CASES: dict[str, dict[str, Any]] = {
    "opt": {
        "cls": "OPT",
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "ffn_dim": 64,
        "num_attention_heads": 4,
        "max_position_embeddings": 128,
        "bos_token_id": EOS,
        "eos_token_id": EOS,
        "pad_token_id": 1,
    },
    # Grouped-query attention: 4 query heads share 2 KV heads.
    "llama": {
        "cls": "Llama",
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "intermediate_size": 48,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "bos_token_id": 0,
        "eos_token_id": EOS,
    },
    "mixtral": {
        "cls": "Mixtral",
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "intermediate_size": 48,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "num_local_experts": 4,
        "bos_token_id": 0,
        "eos_token_id": EOS,
    },
}

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "hello world this is a tiny corpus for testing stop strings",
    "once upon a time there was a small model that liked to talk",
    "researchers score text with the logprobs of its tokens",
]


def hf_model(name: str, **overrides: Any) -> Any:
    model = random_hf_model({**CASES[name], **overrides}, seed=sum(map(ord, name)))
    if name == "opt":
        with torch.no_grad():
            # Stronger weights so greedy decoding is not a repetition of one token.
            for param in model.parameters():
                if param.ndim == 2:
                    param.mul_(8.0)
    return model


def build_tokenizer() -> Tokenizer:
    """A SentencePiece-style BPE ("▁" marks spaces) trained on a few sentences; ids 0-3 are
    <s>, <pad>, </s>, <unk>."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 8, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False
    )
    tokenizer.train_from_iterator(CORPUS * 5, trainer)
    return tokenizer


def make_checkpoint(name: str, path: Path, *, tokenizer: bool = True, **overrides: Any) -> Path:
    hf_model(name, **overrides).save_pretrained(path)
    if tokenizer:
        build_tokenizer().save(str(path / "tokenizer.json"))
    return path

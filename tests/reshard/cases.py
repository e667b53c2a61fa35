"""Tiny architectures shared by the reshard tests."""

from __future__ import annotations

import training

VOCAB = 100  # padded to 104: exercises vocabulary padding

# Sizes chosen so no FSDP flat param splits evenly into 3 shards (uneven padding).
OPT = training.ModelConfig(
    family="opt",
    name="tiny-opt",
    vocab_size=104,
    n_layer=2,
    n_head=4,
    n_embd=32,
    ffn_dim=68,
    max_seq_len=63,
    bos_token_id=2,
    eos_token_id=2,
    pad_token_id=1,
)
# OPT-350M shape: post-norm, narrower embeddings with project_in/out.
OPT350 = OPT.replace(name="tiny-opt350", pre_norm=False, word_embed_proj_dim=16)
LLAMA = training.ModelConfig(
    family="llama",
    name="tiny-llama",
    vocab_size=VOCAB,
    n_layer=2,
    n_head=4,
    n_kv_head=4,
    n_embd=32,
    ffn_dim=48,
    max_seq_len=64,
)
MIXTRAL = training.ModelConfig(
    family="mixtral",
    name="tiny-mixtral",
    vocab_size=VOCAB,
    n_layer=2,
    n_head=4,
    n_kv_head=4,
    n_embd=32,
    ffn_dim=48,
    max_seq_len=64,
    n_expert=4,
)
GLAM = MIXTRAL.replace(name="tiny-glam", n_layer=4, moe_every=2)

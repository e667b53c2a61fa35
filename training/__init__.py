"""Tensor-parallel decoder stack (OPT, LLaMA, top-k MoE). Plain PyTorch: never imports Django."""

from __future__ import annotations

from training.config import CONFIGS, ModelConfig, get_config
from training.hf import CheckpointError, gather_full_state, hf_name_map, load_pretrained, save_pretrained
from training.model import KVCache, Transformer, build_model, load_balancing_loss, meta_model
from training.parallel import (
    REPLICATED,
    Replicated,
    Shard,
    ShardSpec,
    TPGroup,
    full_shape_of,
    merge_shards,
    shard_slices,
    shard_tensor,
    sharding_plan,
)

__all__ = [
    "CONFIGS",
    "CheckpointError",
    "KVCache",
    "ModelConfig",
    "REPLICATED",
    "Replicated",
    "Shard",
    "ShardSpec",
    "TPGroup",
    "Transformer",
    "build_model",
    "meta_model",
    "full_shape_of",
    "gather_full_state",
    "get_config",
    "hf_name_map",
    "load_balancing_loss",
    "load_pretrained",
    "merge_shards",
    "save_pretrained",
    "shard_slices",
    "shard_tensor",
    "sharding_plan",
]

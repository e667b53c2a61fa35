"""Fixture generators: metaseq checkpoints built from a state in our parameter names.

Written from FORMATS.md directly, not with the converter's own helpers, so that a mistake in the
converter's per-part K,V,Q handling or in its unflattening cannot cancel out against the same
mistake here. Used by tests/reshard and bench/bench_reshard.py.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

import torch

from reshard import metaseq
from reshard.layout import ModelLayout
from training import ModelConfig


def random_state(cfg: ModelConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Full tensors under our names; norms near 1, everything else small and random. Padded
    vocabulary rows are zero, as a freshly padded embedding would be."""
    layout = ModelLayout.of(cfg)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name in layout.names:
        shape = layout.shapes[name]
        if "norm" in name and name.endswith(".weight"):
            tensor = 1.0 + 0.05 * torch.randn(shape, generator=gen)
        else:
            tensor = 0.05 * torch.randn(shape, generator=gen)
        if name in ("embed.weight", "lm_head.weight"):
            tensor[cfg.vocab_size :] = 0
        state[name] = tensor.to(dtype)
    return state


def metaseq_parts(state: dict[str, torch.Tensor], cfg: ModelConfig, parts: int) -> list[dict[str, torch.Tensor]]:
    """Megatron split per FORMATS.md 1.2: embedding by vocabulary rows; qkv by heads with each
    part's slice ordered K, V, Q; fc1 by rows; out_proj/fc2 weights by columns; the rest whole."""
    names = metaseq.name_map(cfg)
    out: list[dict[str, torch.Tensor]] = [{} for _ in range(parts)]
    hidden = cfg.n_head * cfg.attn_head_dim
    for ours, full in state.items():
        theirs = names[ours]
        for p in range(parts):
            if ours.endswith("attn.qkv.weight") or ours.endswith("attn.qkv.bias"):
                q, k, v = full[:hidden], full[hidden : 2 * hidden], full[2 * hidden :]
                rows = hidden // parts
                piece = torch.cat(
                    [k[p * rows : (p + 1) * rows], v[p * rows : (p + 1) * rows], q[p * rows : (p + 1) * rows]]
                )
            elif theirs == "decoder.embed_tokens.weight" or theirs.endswith(("fc1.weight", "fc1.bias")):
                rows = full.shape[0] // parts
                piece = full[p * rows : (p + 1) * rows]
            elif theirs.endswith(("self_attn.out_proj.weight", "fc2.weight")):
                cols = full.shape[1] // parts
                piece = full[:, p * cols : (p + 1) * cols]
            else:
                piece = full
            out[p][theirs] = piece.contiguous().clone()
    return out


def _cfg(cfg: ModelConfig, parts: int, namespace_args: bool) -> dict[str, Any]:
    saved = metaseq.cfg_from_config(cfg, parts)
    if namespace_args:  # old fairseq checkpoints: an argparse.Namespace next to the cfg
        saved = {**saved, "args": argparse.Namespace(arch="transformer_lm_megatron", lr=[1e-4])}
    return saved


def _common(cfg: ModelConfig, parts: int, namespace_args: bool, with_arch: bool) -> dict[str, Any]:
    return {
        "cfg": _cfg(cfg, parts, namespace_args) if with_arch else {"common": {"model_parallel_size": parts}},
        "extra_state": {"epoch": 1, "train_iterator": {"epoch": 1, "iterations_in_epoch": 10}},
        "optimizer_history": [{"criterion_name": "VocabParallelCrossEntropyCriterion", "num_updates": 10}],
        "task_state": {},
        "criterion": None,
    }


def write_metaseq_tp(
    parts_state: list[dict[str, torch.Tensor]],
    cfg: ModelConfig,
    folder: str | os.PathLike[str],
    *,
    prefix: str = "reshard",
    namespace_args: bool = False,
    with_arch: bool = True,
) -> list[Path]:
    """``<prefix>-model_part-P.pt`` per part: unflattened names plus the ``decoder.version`` buffer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for p, tensors in enumerate(parts_state):
        model = {**tensors, metaseq.VERSION_BUFFER: torch.tensor([3.0])}
        file = folder / f"{prefix}-model_part-{p}.pt"
        torch.save({"model": model, **_common(cfg, len(parts_state), namespace_args, with_arch)}, file)
        files.append(file)
    return files


def fsdp_modules(cfg: ModelConfig) -> list[tuple[str, list[str]]]:
    """(fsdp_path, parameter names relative to it) in flattening order: the root module, then one
    module per decoder layer."""
    root = ["decoder.embed_tokens.weight", "decoder.embed_positions.weight"]
    if cfg.word_embed_proj_dim is not None:
        root += ["decoder.project_in_dim.weight", "decoder.project_out_dim.weight"]
    if cfg.pre_norm:
        root += ["decoder.layer_norm.weight", "decoder.layer_norm.bias"]
    layer = [
        f"{m}.{w}"
        for m in ("self_attn.qkv_proj", "self_attn.out_proj", "self_attn_layer_norm", "fc1", "fc2", "final_layer_norm")
        for w in ("weight", "bias")
    ]
    return [("", root)] + [(f"decoder.layers.{i}", list(layer)) for i in range(cfg.n_layer)]


def write_metaseq_fsdp(
    parts_state: list[dict[str, torch.Tensor]],
    cfg: ModelConfig,
    folder: str | os.PathLike[str],
    *,
    shards: int,
    prefix: str = "checkpoint_last",
    namespace_args: bool = False,
    with_arch: bool = True,
) -> list[Path]:
    """``<prefix>-model_part-P-shardS.pt``: per FSDP module, the part's parameters flattened and
    concatenated in order, cut into ``shards`` equal pieces, the last ones zero-padded; fairscale's
    shard_metadata records names, shapes, numels and each shard's padding."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for p, tensors in enumerate(parts_state):
        per_shard_model: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
        per_shard_meta: list[list[dict[str, Any]]] = [[] for _ in range(shards)]
        for fsdp_path, rel_names in fsdp_modules(cfg):
            full_names = [f"{fsdp_path}.{n}" if fsdp_path else n for n in rel_names]
            flat = torch.cat([tensors[n].reshape(-1) for n in full_names])
            size = math.ceil(flat.numel() / shards)
            key = f"{fsdp_path}.flat_param_0" if fsdp_path else "flat_param_0"
            for s in range(shards):
                piece = flat[s * size : (s + 1) * size]
                padding = size - piece.numel()
                per_shard_model[s][key] = torch.cat([piece, piece.new_zeros(padding)]).clone()
                per_shard_meta[s].append(
                    {
                        "fsdp_path": fsdp_path,
                        "params": {
                            "flat_param_0": {
                                "names": list(rel_names),
                                "shapes": [torch.Size(tensors[n].shape) for n in full_names],
                                "numels": [tensors[n].numel() for n in full_names],
                                "padding": padding,
                            }
                        },
                        "no_broadcast_optim_state": False,
                        "shared_param_info": [("decoder.embed_tokens", "weight", "decoder.output_projection", "weight")]
                        if fsdp_path == ""
                        else [],
                    }
                )
        for s in range(shards):
            model = {**per_shard_model[s], metaseq.VERSION_BUFFER: torch.tensor([3.0])}
            meta = {"param_metadata": per_shard_meta[s], "buffer_names": [metaseq.VERSION_BUFFER]}
            file = folder / f"{prefix}-model_part-{p}-shard{s}.pt"
            torch.save(
                {"model": model, "shard_metadata": meta, **_common(cfg, len(parts_state), namespace_args, with_arch)},
                file,
            )
            files.append(file)
    return files

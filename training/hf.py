"""Loading from and saving to the transformers checkpoint layout (config.json + safetensors).

The name maps below are the only place our parameter names meet transformers' names. Each of
our parameters maps to a *source*: a small tree that says how the full tensor is assembled from
checkpoint tensors (one tensor; fused blocks concatenated; experts stacked; vocabulary rows
padded). A source can read any rectangular slice of the full tensor straight from the files
(``safe_open(...).get_slice``), so a rank reads only its shard, and can split a full tensor back
into checkpoint tensors for saving.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from training.config import ModelConfig
from training.model import Transformer, meta_model
from training.parallel import Shard, TPGroup, merge_shards, shard_slices, sharding_plan

Index = tuple[slice, ...]

# Checkpoint keys that carry nothing we need: old LLaMA exports saved the rotary inverse
# frequencies, and some OPT exports store the tied head explicitly.
_IGNORED_KEYS = (re.compile(r".*\.rotary_emb\.inv_freq$"),)


class CheckpointError(ValueError):
    """A checkpoint does not match the model its config.json describes."""


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


class CheckpointReader:
    """Lazy view of a transformers directory: single ``model.safetensors`` or a sharded set with
    ``model.safetensors.index.json``. Opens each file once, reads slices on demand."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        index = self.path / "model.safetensors.index.json"
        single = self.path / "model.safetensors"
        if index.exists():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        elif single.exists():
            with safe_open(str(single), "pt") as handle:
                weight_map = {key: single.name for key in handle.keys()}
        else:
            raise FileNotFoundError(f"{self.path} has neither model.safetensors nor model.safetensors.index.json")
        self.weight_map = weight_map
        self._handles: dict[str, Any] = {}
        # transformers' OPT exports sometimes omit the "model." prefix ("decoder.layers.0...").
        self.prefix = "" if any(k.startswith("model.") for k in weight_map) else "model."

    def keys(self) -> set[str]:
        return {k if k.startswith("lm_head.") else self.prefix + k for k in self.weight_map}

    def _stored(self, name: str) -> str:
        return name.removeprefix(self.prefix) if self.prefix else name

    def _slice(self, name: str) -> Any:
        stored = self._stored(name)
        if stored not in self.weight_map:
            raise CheckpointError(f"checkpoint {self.path} is missing tensor {name!r}")
        file = self.weight_map[stored]
        if file not in self._handles:
            self._handles[file] = safe_open(str(self.path / file), "pt")
        return self._handles[file].get_slice(stored)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def read(self, name: str, index: Index) -> torch.Tensor:
        return self._slice(name)[index]


# --------------------------------------------------------------------------------------------
# Sources: how one of our full tensors is made of checkpoint tensors
# --------------------------------------------------------------------------------------------


@dataclass
class File:
    name: str
    shape: tuple[int, ...]  # what the config says this checkpoint tensor must be

    def leaves(self) -> list[File]:
        return [self]

    def read(self, reader: CheckpointReader, index: Index) -> torch.Tensor:
        return reader.read(self.name, index)

    def split(self, full: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.name: full}


@dataclass
class Cat:
    """Fused blocks laid end to end along ``dim`` (q|k|v, gate|up)."""

    parts: list[Any]
    dim: int

    @property
    def shape(self) -> tuple[int, ...]:
        shape = list(self.parts[0].shape)
        shape[self.dim] = sum(p.shape[self.dim] for p in self.parts)
        return tuple(shape)

    def leaves(self) -> list[File]:
        return [leaf for p in self.parts for leaf in p.leaves()]

    def read(self, reader: CheckpointReader, index: Index) -> torch.Tensor:
        want = index[self.dim]
        pieces, offset = [], 0
        for part in self.parts:
            size = part.shape[self.dim]
            lo, hi = max(want.start, offset), min(want.stop, offset + size)
            if lo < hi:
                sub = list(index)
                sub[self.dim] = slice(lo - offset, hi - offset)
                pieces.append(part.read(reader, tuple(sub)))
            offset += size
        return torch.cat(pieces, dim=self.dim)

    def split(self, full: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        chunks = full.split([p.shape[self.dim] for p in self.parts], dim=self.dim)
        for part, chunk in zip(self.parts, chunks, strict=True):
            out.update(part.split(chunk))
        return out


@dataclass
class Stack:
    """Per-expert tensors stacked along a new leading dim (transformers 4.x-style expert names)."""

    parts: list[Any]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.parts), *self.parts[0].shape)

    def leaves(self) -> list[File]:
        return [leaf for p in self.parts for leaf in p.leaves()]

    def read(self, reader: CheckpointReader, index: Index) -> torch.Tensor:
        return torch.stack([self.parts[e].read(reader, index[1:]) for e in range(*index[0].indices(len(self.parts)))])

    def split(self, full: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for part, expert in zip(self.parts, full.unbind(0), strict=True):
            out.update(part.split(expert))
        return out


@dataclass
class PadRows:
    """Vocabulary rows padded with zeros up to ``rows`` (our padded vocab)."""

    part: Any
    rows: int

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.rows, *self.part.shape[1:])

    def leaves(self) -> list[File]:
        return self.part.leaves()

    def read(self, reader: CheckpointReader, index: Index) -> torch.Tensor:
        lo, hi = index[0].start, index[0].stop
        real = self.part.shape[0]
        pieces = []
        if lo < real:
            pieces.append(self.part.read(reader, (slice(lo, min(hi, real)), *index[1:])))
        if hi > real:
            like = pieces[0] if pieces else self.part.read(reader, (slice(0, 1), *index[1:]))
            pieces.append(torch.zeros((hi - max(lo, real), *like.shape[1:]), dtype=like.dtype))
        return torch.cat(pieces, dim=0)

    def split(self, full: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.part.split(full[: self.part.shape[0]])


# --------------------------------------------------------------------------------------------
# Name maps (ours -> transformers)
# --------------------------------------------------------------------------------------------


def hf_name_map(cfg: ModelConfig, *, expert_layout: str = "per_expert") -> dict[str, Any]:
    """Our parameter name -> source in a transformers checkpoint of ``cfg``.

    ``expert_layout`` for Mixtral: ``"per_expert"`` (``block_sparse_moe.experts.E.w1/w2/w3``,
    which transformers 5.23's save_pretrained still writes) or ``"stacked"``
    (``mlp.experts.gate_up_proj`` / ``mlp.experts.down_proj``, transformers 5's in-memory names).
    """
    h, e = cfg.n_embd, cfg.embed_dim
    q, kv = cfg.n_head * cfg.attn_head_dim, cfg.kv_heads * cfg.attn_head_dim
    vocab = File(
        "model.decoder.embed_tokens.weight" if cfg.family == "opt" else "model.embed_tokens.weight", (cfg.vocab_size, e)
    )
    m: dict[str, Any] = {"embed.weight": PadRows(vocab, cfg.padded_vocab_size)}
    if not cfg.tied:
        m["lm_head.weight"] = PadRows(File("lm_head.weight", (cfg.vocab_size, e)), cfg.padded_vocab_size)

    if cfg.family == "opt":
        d = "model.decoder"
        m["pos_embed.weight"] = File(f"{d}.embed_positions.weight", (cfg.max_seq_len + 2, h))
        if cfg.word_embed_proj_dim is not None:
            m["project_in.weight"] = File(f"{d}.project_in.weight", (h, e))
            m["project_out.weight"] = File(f"{d}.project_out.weight", (e, h))
        if cfg.pre_norm:
            m["final_norm.weight"] = File(f"{d}.final_layer_norm.weight", (h,))
            m["final_norm.bias"] = File(f"{d}.final_layer_norm.bias", (h,))
        for i in range(cfg.n_layer):
            ours, hf = f"layers.{i}", f"{d}.layers.{i}"
            for w, shape in (("weight", lambda n: (n, h)), ("bias", lambda n: (n,))):
                m[f"{ours}.attn.qkv.{w}"] = Cat(
                    [File(f"{hf}.self_attn.{p}_proj.{w}", shape(n)) for p, n in (("q", q), ("k", kv), ("v", kv))], 0
                )
            m[f"{ours}.attn.out.weight"] = File(f"{hf}.self_attn.out_proj.weight", (h, q))
            m[f"{ours}.attn.out.bias"] = File(f"{hf}.self_attn.out_proj.bias", (h,))
            m[f"{ours}.mlp.fc1.weight"] = File(f"{hf}.fc1.weight", (cfg.ffn_dim, h))
            m[f"{ours}.mlp.fc1.bias"] = File(f"{hf}.fc1.bias", (cfg.ffn_dim,))
            m[f"{ours}.mlp.fc2.weight"] = File(f"{hf}.fc2.weight", (h, cfg.ffn_dim))
            m[f"{ours}.mlp.fc2.bias"] = File(f"{hf}.fc2.bias", (h,))
            for norm, hf_norm in (("attn_norm", "self_attn_layer_norm"), ("mlp_norm", "final_layer_norm")):
                for w in ("weight", "bias"):
                    m[f"{ours}.{norm}.{w}"] = File(f"{hf}.{hf_norm}.{w}", (h,))
        return m

    m["final_norm.weight"] = File("model.norm.weight", (h,))
    f = cfg.ffn_dim
    for i in range(cfg.n_layer):
        ours, hf = f"layers.{i}", f"model.layers.{i}"
        m[f"{ours}.attn.qkv.weight"] = Cat(
            [File(f"{hf}.self_attn.{p}_proj.weight", (n, h)) for p, n in (("q", q), ("k", kv), ("v", kv))], 0
        )
        m[f"{ours}.attn.out.weight"] = File(f"{hf}.self_attn.o_proj.weight", (h, q))
        m[f"{ours}.attn_norm.weight"] = File(f"{hf}.input_layernorm.weight", (h,))
        m[f"{ours}.mlp_norm.weight"] = File(f"{hf}.post_attention_layernorm.weight", (h,))
        if not cfg.is_moe_layer(i):
            m[f"{ours}.mlp.gate_up.weight"] = Cat(
                [File(f"{hf}.mlp.gate_proj.weight", (f, h)), File(f"{hf}.mlp.up_proj.weight", (f, h))], 0
            )
            m[f"{ours}.mlp.down.weight"] = File(f"{hf}.mlp.down_proj.weight", (h, f))
        elif expert_layout == "stacked":
            m[f"{ours}.mlp.router.weight"] = File(f"{hf}.mlp.gate.weight", (cfg.n_expert, h))
            m[f"{ours}.mlp.gate_up"] = File(f"{hf}.mlp.experts.gate_up_proj", (cfg.n_expert, 2 * f, h))
            m[f"{ours}.mlp.down"] = File(f"{hf}.mlp.experts.down_proj", (cfg.n_expert, h, f))
        elif expert_layout == "per_expert":
            moe = f"{hf}.block_sparse_moe"
            m[f"{ours}.mlp.router.weight"] = File(f"{moe}.gate.weight", (cfg.n_expert, h))
            m[f"{ours}.mlp.gate_up"] = Stack(
                [
                    Cat([File(f"{moe}.experts.{x}.w1.weight", (f, h)), File(f"{moe}.experts.{x}.w3.weight", (f, h))], 0)
                    for x in range(cfg.n_expert)
                ]
            )
            m[f"{ours}.mlp.down"] = Stack([File(f"{moe}.experts.{x}.w2.weight", (h, f)) for x in range(cfg.n_expert)])
        else:
            raise ValueError(f"expert_layout={expert_layout!r}: expected 'per_expert' or 'stacked'")
    return m


# --------------------------------------------------------------------------------------------
# Load / save
# --------------------------------------------------------------------------------------------


def _dtype_from_config(hf: dict[str, Any]) -> torch.dtype:
    name = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"config.json field dtype={name!r} is not a torch dtype; pass dtype= explicitly")
    return dtype


def load_pretrained(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    group: object = None,
) -> Transformer:
    """Our model, sharded for the current tensor-parallel group, from a transformers directory.

    Builds on the meta device and reads only this rank's slice of each tensor. Fails before
    reading any weight if a tensor is missing, has the wrong shape or is not recognised.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{config_file} not found: a transformers checkpoint directory needs config.json")
    hf_config = json.loads(config_file.read_text())
    cfg = ModelConfig.from_hf(hf_config, name=path.name)
    tp = TPGroup.resolve(group)
    reader = CheckpointReader(path)
    keys = reader.keys()

    layout = "stacked" if any(k.endswith("mlp.experts.gate_up_proj") for k in keys) else "per_expert"
    name_map = hf_name_map(cfg, expert_layout=layout)

    # Validate every checkpoint tensor against the config before reading any data.
    expected = {leaf.name: leaf.shape for src in name_map.values() for leaf in src.leaves()}
    missing = sorted(n for n in expected if n not in keys)
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise CheckpointError(f"checkpoint {path} is missing tensor(s) {missing[:5]}{more} that the config requires")
    ignorable = {"lm_head.weight"} if cfg.tied else set()
    unknown = sorted(k for k in keys - expected.keys() - ignorable if not any(p.match(k) for p in _IGNORED_KEYS))
    if unknown:
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise CheckpointError(
            f"checkpoint {path} has unknown tensor(s) {unknown[:5]}{more}: they match no "
            f"parameter of a {cfg.family} model with this config.json"
        )
    for name, shape in expected.items():
        found = reader.shape(name)
        if found != shape:
            raise CheckpointError(
                f"tensor {name!r} in {path} has shape {found}, but config.json implies {shape}: "
                f"the weights and config.json do not belong together"
            )

    model = meta_model(cfg, tp)
    model.to_empty(device=device)
    model = model.to(dtype or _dtype_from_config(hf_config))
    plan = sharding_plan(model)
    if set(plan) != set(name_map):
        raise RuntimeError(f"internal: name map and model disagree on {sorted(set(plan) ^ set(name_map))}")
    with torch.no_grad():
        for name, param in model.named_parameters():
            spec, source = plan[name], name_map[name]
            pieces = [source.read(reader, index) for index in shard_slices(spec, source.shape, tp.rank, tp.world_size)]
            local = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=spec.dim if isinstance(spec, Shard) else 0)
            if tuple(local.shape) != tuple(param.shape):
                raise RuntimeError(
                    f"internal: {name} read as {tuple(local.shape)} but the rank holds {tuple(param.shape)}"
                )
            param.copy_(local)
    return model.eval()


def gather_full_state(model: Transformer, *, to_rank0_only: bool = True) -> dict[str, torch.Tensor]:
    """Full (unsharded) tensors under our names, merged by the sharding declarations. With a
    group of more than one rank every rank must call this; only rank 0 gets tensors back unless
    ``to_rank0_only=False``."""
    tp = model.tp
    plan = sharding_plan(model)
    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        local = param.detach()
        if tp.world_size > 1 and isinstance(plan[name], Shard):
            parts = [torch.empty_like(local) for _ in range(tp.world_size)]
            dist.all_gather(parts, local.contiguous(), group=tp.group)
            full = merge_shards(parts, plan[name])
        else:
            full = local.clone()
        if tp.rank == 0 or not to_rank0_only:
            state[name] = full
    return state


def save_pretrained(model: Transformer, path: str | os.PathLike[str]) -> None:
    """Write ``config.json`` + ``model.safetensors`` in the transformers layout (rank 0 writes; all
    ranks of the group must call). Mixtral experts are written with the per-expert names that
    transformers 5.23's own save_pretrained writes."""
    cfg = model.config
    state = gather_full_state(model)
    if model.tp.rank == 0:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        name_map = hf_name_map(cfg)
        tensors: dict[str, torch.Tensor] = {}
        for name, full in state.items():
            for hf_name, tensor in name_map[name].split(full).items():
                tensors[hf_name] = tensor.detach().cpu().clone(memory_format=torch.contiguous_format)
        dtype = str(next(iter(state.values())).dtype).removeprefix("torch.")
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        (path / "config.json").write_text(json.dumps(cfg.to_hf(dtype=dtype), indent=2, sort_keys=True) + "\n")
    if model.tp.world_size > 1:
        dist.barrier(group=model.tp.group)

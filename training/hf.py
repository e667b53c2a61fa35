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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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

# A transformers checkpoint's weights: one file, or shards named by an index.
HF_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")

# The dtypes checkpoints are stored in, by every accepted spelling: torch's names (what
# config.json and our outputs record) and the short ones people type.
DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
}
SHORT_DTYPE_NAMES: dict[torch.dtype, str] = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def parse_dtype(spelling: str | torch.dtype) -> torch.dtype:
    """The torch dtype for a name from ``DTYPES`` (or a dtype itself, checked against it)."""
    if isinstance(spelling, torch.dtype):
        if spelling not in SHORT_DTYPE_NAMES:
            raise ValueError(f"dtype {spelling}: use one of fp16, bf16, fp32")
        return spelling
    try:
        return DTYPES[spelling.removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"dtype {spelling!r}: use one of fp16, bf16, fp32") from None


def dtype_name(dtype: torch.dtype) -> str:
    """torch's name of ``dtype`` ("float16"), as config.json files record it."""
    return str(dtype).removeprefix("torch.")


def hf_config_dtype(hf_config: dict[str, Any]) -> str:
    """The dtype a transformers config.json states, "" when none: transformers 5 writes "dtype",
    4.x wrote "torch_dtype"."""
    return str(hf_config.get("dtype") or hf_config.get("torch_dtype") or "")


class CheckpointError(ValueError):
    """A checkpoint does not match the model its config.json describes, or its files do not
    form a checkpoint. ``missing`` and ``unused`` list the tensor names at fault, if any."""

    def __init__(self, message: str, *, missing: list[str] | None = None, unused: list[str] | None = None) -> None:
        super().__init__(message)
        self.missing = list(missing or [])
        self.unused = list(unused or [])


def _listing(names: list[str], limit: int = 5) -> str:
    return f"{names[:limit]}" + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


class TensorFile(Protocol):
    """One opened weights file: its tensors' names, shapes and dtypes, and slices of them."""

    def keys(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def dtype(self, name: str) -> torch.dtype: ...

    def read(self, name: str, index: Index) -> torch.Tensor: ...

    def close(self) -> None: ...


class _SafetensorsFile:
    """safetensors' own reader: ``get_slice`` reads just the requested slice."""

    def __init__(self, path: Path) -> None:
        self._handle: Any = safe_open(str(path), "pt")

    def keys(self) -> list[str]:
        return list(self._handle.keys())

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handle.get_slice(name).get_shape())

    def dtype(self, name: str) -> torch.dtype:
        code = self._handle.get_slice(name).get_dtype()
        if code not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"tensor {name!r} is stored as {code}; expected one of F16, BF16, F32")
        return _SAFETENSORS_DTYPES[code]

    def read(self, name: str, index: Index) -> torch.Tensor:
        return self._handle.get_slice(name)[index]

    def close(self) -> None:
        self._handle = None


_SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


class _TorchBinFile:
    """A ``pytorch_model*.bin`` state dict, memory-mapped; ``weights_only`` refuses code in the pickle."""

    def __init__(self, path: Path) -> None:
        state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise CheckpointError(f"{path}: expected a flat dict of tensors")
        self._state: dict[str, torch.Tensor] = state

    def keys(self) -> list[str]:
        return list(self._state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._state[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._state[name].dtype

    def read(self, name: str, index: Index) -> torch.Tensor:
        return self._state[name][index].clone()

    def close(self) -> None:
        self._state = {}


def open_tensor_file(path: Path) -> TensorFile:
    return _SafetensorsFile(path) if path.name.endswith(".safetensors") else _TorchBinFile(path)


class CheckpointReader:
    """Lazy view of a transformers directory: ``model.safetensors`` or ``pytorch_model.bin``, or a
    sharded set named by its index. Opens each file once through ``open_file`` and reads slices
    on demand. Names are ours to the outside: "model."-prefixed even where an export left the
    prefix out."""

    def __init__(
        self, path: str | os.PathLike[str], *, open_file: Callable[[Path], TensorFile] = open_tensor_file
    ) -> None:
        self.path = Path(path)
        single = next((self.path / n for n in HF_SINGLE_FILES if (self.path / n).is_file()), None)
        index = next((self.path / n for n in HF_INDEX_FILES if (self.path / n).is_file()), None)
        weight_map: dict[str, str] | None = None
        if single is not None:
            names = [single.name]
        elif index is not None:
            try:
                weight_map = dict(json.loads(index.read_text())["weight_map"])
            except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(f"{index}: unreadable index ({exc})") from None
            names = sorted(set(weight_map.values()))
        else:
            raise CheckpointError(
                f"{self.path}: no transformers weights ({', '.join(HF_SINGLE_FILES + HF_INDEX_FILES)})"
            )
        self.files = [self.path / name for name in names]
        self._files: dict[str, TensorFile] = {}
        self._where: dict[str, str] = {}  # stored tensor name -> file name
        try:
            for file in self.files:
                if not file.is_file():
                    raise CheckpointError(f"{file}: listed in the index but missing")
                opened = self._files[file.name] = open_file(file)
                for key in opened.keys():
                    if key in self._where:
                        raise CheckpointError(
                            f"{self.path}: tensor {key!r} is stored twice ({self._where[key]}, {file.name})"
                        )
                    self._where[key] = file.name
            if weight_map is not None and set(weight_map) != set(self._where):
                disagree = sorted(set(weight_map) ^ set(self._where))
                raise CheckpointError(f"{index}: index and files disagree on {_listing(disagree)}")
        except BaseException:
            self.close()
            raise
        # transformers' OPT exports sometimes omit the "model." prefix ("decoder.layers.0...").
        self.prefix = "" if any(k.startswith("model.") for k in self._where) else "model."

    def _stored(self, name: str) -> str:
        stored = name if name.startswith("lm_head.") else name.removeprefix(self.prefix)
        if stored not in self._where:
            raise CheckpointError(f"checkpoint {self.path} is missing tensor {name!r}")
        return stored

    def keys(self) -> set[str]:
        return {k if k.startswith("lm_head.") else self.prefix + k for k in self._where}

    def shape(self, name: str) -> tuple[int, ...]:
        stored = self._stored(name)
        return self._files[self._where[stored]].shape(stored)

    def dtype(self, name: str) -> torch.dtype:
        stored = self._stored(name)
        return self._files[self._where[stored]].dtype(stored)

    def read(self, name: str, index: Index) -> torch.Tensor:
        stored = self._stored(name)
        return self._files[self._where[stored]].read(stored, index)

    def close(self) -> None:
        for opened in self._files.values():
            opened.close()
        self._files.clear()


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


def match_checkpoint(cfg: ModelConfig, reader: CheckpointReader) -> dict[str, Any]:
    """The name map of ``cfg`` for the tensors ``reader`` holds, after checking that every
    checkpoint tensor is one the config implies, with its shape, and none is missing: before
    any weight is read. A tied model's head may be stored too (its caller decides what to do
    with it)."""
    keys = reader.keys()
    layout = "stacked" if any(k.endswith("mlp.experts.gate_up_proj") for k in keys) else "per_expert"
    name_map = hf_name_map(cfg, expert_layout=layout)
    expected = {leaf.name: leaf.shape for src in name_map.values() for leaf in src.leaves()}
    missing = sorted(n for n in expected if n not in keys)
    if missing:
        raise CheckpointError(
            f"checkpoint {reader.path} is missing tensor(s) {_listing(missing)} that the config requires",
            missing=missing,
        )
    ignorable = {"lm_head.weight"} if cfg.tied else set()
    unknown = sorted(k for k in keys - expected.keys() - ignorable if not any(p.match(k) for p in _IGNORED_KEYS))
    if unknown:
        raise CheckpointError(
            f"checkpoint {reader.path} has unknown tensor(s) {_listing(unknown)}: they match no "
            f"parameter of a {cfg.family} model with this config.json",
            unused=unknown,
        )
    for name, shape in expected.items():
        found = reader.shape(name)
        if found != shape:
            raise CheckpointError(
                f"tensor {name!r} in {reader.path} has shape {found}, but config.json implies {shape}: "
                f"the weights and config.json do not belong together"
            )
    return name_map


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
    if dtype is None:
        try:
            dtype = parse_dtype(hf_config_dtype(hf_config) or "float32")
        except ValueError as exc:
            raise ValueError(f"{config_file}: {exc}; or pass dtype= explicitly") from None
    tp = TPGroup.resolve(group)
    reader = CheckpointReader(path)
    try:
        return _load(cfg, reader, match_checkpoint(cfg, reader), dtype=dtype, device=device, tp=tp)
    finally:
        reader.close()


def _load(
    cfg: ModelConfig,
    reader: CheckpointReader,
    name_map: dict[str, Any],
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    tp: TPGroup,
) -> Transformer:
    model = meta_model(cfg, tp)
    model.to_empty(device=device)
    model = model.to(dtype)
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
        dtype = dtype_name(next(iter(state.values())).dtype)
        save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
        (path / "config.json").write_text(json.dumps(cfg.to_hf(dtype=dtype), indent=2, sort_keys=True) + "\n")
    if model.tp.world_size > 1:
        dist.barrier(group=model.tp.group)

"""Training checkpoints that cannot be half-written, saved with torch.distributed.checkpoint.

Layout of ``RUN_DIR/checkpoints``::

    step_<N>/            committed: renamed from step_<N>.tmp/ after every rank finished
        .metadata        DCP's index (written by rank 0 once all ranks' parts are in)
        __<rank>_0.distcp  each rank's own part
        meta.json        the trainer state, readable (the same as in the DCP state)
        COMMITTED        the marker, written before the rename
    step_<N>.tmp/        a save in progress, or one killed part way: never resumed from

A checkpoint counts only with the marker inside a directory named ``step_<N>``: the rename is
the atomic commit, the marker says the rename happened to a finished directory.

Keys are our parameter names with the tensor-parallel sharding spelled out for DCP: each
tensor-parallel shard is a ``DTensor`` on the (dp, tp) mesh with placements
[Replicate(), Shard(dim)], so DCP knows where it sits in the full tensor and writes each piece
once (from one data-parallel replica). A fused parameter (q|k|v, gate|up) is stored as one key
per block (``.../block0``), each an even split over tp; so a checkpoint saved at one (tp, dp)
loads at any other (tp, dp) the model allows: DCP reads each rank's new slices from the old
parts. Replicated tensors are plain tensors, written once.

    model/<name>[/blockJ]            parameters
    optim/<name>[/blockJ]/<state>    optimizer state of the same shape (AdamW exp_avg,
                                     exp_avg_sq; SGD momentum_buffer)
    optim/<name>/<state>             scalar optimizer state (AdamW step)
    trainer                          JSON: step, sampler position, schedule, spike policy
    rng/rank<R>                      each rank's RNG states (torch, CUDA, numpy, python)
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.tensor import DTensor, Replicate
from torch.distributed.tensor import Shard as DShard

from training.config import ModelConfig
from training.model import Transformer
from training.parallel import Replicated, ShardSpec, sharding_plan

CHECKPOINTS = "checkpoints"
COMMIT_MARKER = "COMMITTED"
META = "meta.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_DIR = re.compile(r"^step_(\d+)\.tmp$")


class CheckpointMismatch(ValueError):
    """A checkpoint does not hold what this run's model needs."""


@dataclass(frozen=True)
class Committed:
    step: int
    path: Path


def checkpoint_root(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / CHECKPOINTS


def committed_checkpoints(run_dir: str | os.PathLike[str]) -> list[Committed]:
    """Committed checkpoints, oldest first. ``step_N.tmp`` and unmarked directories are ignored."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and entry.is_dir() and (entry / COMMIT_MARKER).is_file():
            found.append(Committed(int(match.group(1)), entry))
    return sorted(found, key=lambda c: c.step)


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    return dict(json.loads((Path(path) / META).read_text()))


# --------------------------------------------------------------------------------------------
# Keys: how a rank's local tensors map onto DCP's global tensors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    key: str  # suffix after the parameter name: "" or "/blockJ"
    local: torch.Tensor  # a view into the rank's tensor
    global_shape: tuple[int, ...]
    dim: int | None  # tensor-parallel split dim, None when replicated


def pieces(local: torch.Tensor, spec: ShardSpec, tp_size: int) -> list[Piece]:
    """The rank's tensor cut into pieces that are each an even tp split of a global tensor."""
    if isinstance(spec, Replicated):
        return [Piece("", local, tuple(local.shape), None)]
    dim = spec.dim % local.ndim
    blocks = spec.blocks or (local.shape[dim] * tp_size,)
    out, offset = [], 0
    for index, block in enumerate(blocks):
        size = block // tp_size
        shape = list(local.shape)
        shape[dim] = block
        key = f"/block{index}" if spec.blocks else ""
        out.append(Piece(key, local.narrow(dim, offset, size), tuple(shape), dim))
        offset += size
    return out


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for size in reversed(shape):
        stride.append(acc)
        acc *= size
    return tuple(reversed(stride))


def _wrap(piece: Piece, tensor: torch.Tensor, mesh: Any) -> torch.Tensor | DTensor:
    if piece.dim is None or mesh is None:
        return tensor
    return DTensor.from_local(
        tensor,
        mesh,
        [Replicate(), DShard(piece.dim)],
        run_check=False,
        shape=torch.Size(piece.global_shape),
        stride=_contiguous_stride(piece.global_shape),
    )


def _shaped_state(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    for name, value in optimizer.state.get(param, {}).items():
        if isinstance(value, torch.Tensor):
            yield name, value


# --------------------------------------------------------------------------------------------
# RNG
# --------------------------------------------------------------------------------------------


def rng_state() -> bytes:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return pickle.dumps(state)


def set_rng_state(blob: bytes) -> None:
    state = pickle.loads(blob)  # our own file, written by rng_state()
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------
# Save
# --------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    *,
    step: int,
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    mesh: Any,
    rank: int,
    keep_last: int,
    after_write: Callable[[], None] | None = None,
) -> tuple[Path, float]:
    """Collective: every rank writes its part into ``step_<N>.tmp``; rank 0 commits once all
    are done. ``after_write`` runs on every rank between the write and the commit (fault
    injection). Returns (committed path, seconds)."""
    started = time.monotonic()
    root = checkpoint_root(run_dir)
    tmp, final = root / f"step_{step}.tmp", root / f"step_{step}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed save of the same step
        tmp.mkdir(parents=True)
    dist.barrier()

    tp_size = model.tp.world_size
    plan = sharding_plan(model)
    state: dict[str, Any] = {}
    for name, param in model.named_parameters():
        for piece in pieces(param.detach(), plan[name], tp_size):
            state[f"model/{name}{piece.key}"] = _wrap(piece, piece.local, mesh)
        for state_name, value in _shaped_state(optimizer, param):
            if value.shape == param.shape:
                for piece in pieces(value, plan[name], tp_size):
                    state[f"optim/{name}{piece.key}/{state_name}"] = _wrap(piece, piece.local, mesh)
            else:  # scalars (AdamW's step): the same on every rank
                state[f"optim/{name}/{state_name}"] = value
    state["trainer"] = json.dumps(trainer_state, sort_keys=True)
    state[f"rng/rank{rank}"] = rng_state()
    dcp.save(state, checkpoint_id=str(tmp))
    if after_write is not None:
        after_write()
    dist.barrier()  # every rank's part is on disk
    if rank == 0:
        _write_durable(tmp / META, json.dumps(trainer_state, indent=2, sort_keys=True) + "\n")
        _write_durable(tmp / COMMIT_MARKER, f"step {step} committed at {time.time():.3f}\n")
        _fsync_dir(tmp)
        if final.exists():  # a replay after a rollback re-saves a step number
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
        prune(run_dir, keep_last=keep_last)
    dist.barrier()
    return final, time.monotonic() - started


def prune(run_dir: str | os.PathLike[str], *, keep_last: int) -> list[Path]:
    """Keep the newest ``keep_last`` committed checkpoints; drop older ones and leftover
    ``.tmp`` directories of killed saves. Rank 0 only, between saves."""
    removed = []
    committed = committed_checkpoints(run_dir)
    for old in committed[: max(len(committed) - keep_last, 0)]:
        shutil.rmtree(old.path, ignore_errors=True)
        removed.append(old.path)
    root = checkpoint_root(run_dir)
    for entry in root.iterdir():
        if _TMP_DIR.match(entry.name) or (_STEP_DIR.match(entry.name) and not (entry / COMMIT_MARKER).exists()):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def discard_after(run_dir: str | os.PathLike[str], step: int) -> list[Path]:
    """Remove committed checkpoints newer than ``step`` (a rollback abandons them). Rank 0."""
    removed = []
    for newer in committed_checkpoints(run_dir):
        if newer.step > step:
            (newer.path / COMMIT_MARKER).unlink(missing_ok=True)  # uncommitted first, then gone
            shutil.rmtree(newer.path, ignore_errors=True)
            removed.append(newer.path)
    return removed


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    trainer_state: dict[str, Any]
    optimizer_loaded: bool
    rng_restored: bool


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: Transformer,
    optimizer: torch.optim.Optimizer,
    optimizer_kind: str,
    mesh: Any,
    rank: int,
) -> Loaded:
    """Collective: fill ``model`` (this rank's shards, at this run's tp) and, when the checkpoint
    was made with the same optimizer, its state; restore this rank's RNG when the checkpoint
    has one for this rank."""
    path = Path(path)
    available = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    saved_state = json.loads((path / META).read_text())
    same_optimizer = saved_state.get("optimizer") == optimizer_kind
    tp_size = model.tp.world_size
    plan = sharding_plan(model)

    state: dict[str, Any] = {}
    # (load buffer, destination view) for the pieces that are strided views (a fused block split at tp > 1)
    copies: list[tuple[torch.Tensor, torch.Tensor]] = []
    optimizer_state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def want(key: str, piece: Piece, destination: torch.Tensor) -> None:
        found = available.get(key)
        if found is None:
            raise CheckpointMismatch(f"{path}: no tensor {key!r}; the checkpoint was made for another model")
        found_shape = tuple(getattr(found, "size", ()))
        if found_shape != piece.global_shape:
            raise CheckpointMismatch(
                f"{path}: {key} is {list(found_shape)} but this model needs {list(piece.global_shape)}"
            )
        if destination.is_contiguous():
            state[key] = _wrap(piece, destination, mesh)  # read straight into place
            return
        buffer = torch.empty(piece.local.shape, dtype=piece.local.dtype, device=piece.local.device)
        state[key] = _wrap(piece, buffer, mesh)
        copies.append((buffer, destination))

    for name, param in model.named_parameters():
        for piece in pieces(param.detach(), plan[name], tp_size):
            want(f"model/{name}{piece.key}", piece, piece.local)
        if not same_optimizer:
            continue
        prefix = f"optim/{name}"
        slots: dict[str, torch.Tensor] = {}
        for state_name in sorted({k.rsplit("/", 1)[1] for k in available if k.startswith(prefix + "/")}):
            scalar_key = f"{prefix}/{state_name}"
            if scalar_key in available and len(getattr(available[scalar_key], "size", ())) == 0:
                slots[state_name] = state[scalar_key] = torch.zeros((), dtype=torch.float32)
                continue
            value = torch.empty_like(param)  # every element is read from the checkpoint
            slots[state_name] = value
            for piece in pieces(value, plan[name], tp_size):
                want(f"{prefix}{piece.key}/{state_name}", piece, piece.local)
        optimizer_state[param] = slots

    state["trainer"] = ""
    rng_key = f"rng/rank{rank}"
    world_same = saved_state.get("world_size") == dist.get_world_size()
    if rng_key in available and world_same:
        state[rng_key] = b""
    dcp.load(state, checkpoint_id=str(path))

    with torch.no_grad():
        for buffer, destination in copies:
            destination.copy_(buffer)
    if same_optimizer:
        optimizer.state.clear()
        for owner, slots in optimizer_state.items():
            if slots:
                optimizer.state[owner] = slots
    if rng_key in state:
        set_rng_state(state[rng_key])
    return Loaded(json.loads(state["trainer"]), same_optimizer, rng_key in state)


def load_full_state(path: str | os.PathLike[str]) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Full (tp=1) parameters from a committed checkpoint, in one process without
    torch.distributed (export on demand)."""
    from training.model import meta_model
    from training.parallel import TPGroup

    path = Path(path)
    meta = read_meta(path)
    config = ModelConfig(**meta["model"])
    model = meta_model(config, TPGroup(group=None, rank=0, world_size=1))
    plan = sharding_plan(model)
    state: dict[str, Any] = {}
    fulls: dict[str, tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]] = {}
    for name, param in model.named_parameters():
        full = torch.empty(param.shape, dtype=torch.float32)
        views = []
        for piece in pieces(full, plan[name], 1):
            key = f"model/{name}{piece.key}"
            buffer = torch.empty(piece.local.shape, dtype=torch.float32)
            state[key] = buffer
            views.append((key, piece.local))
        fulls[name] = (full, views)
    dcp.load(state, checkpoint_id=str(path), no_dist=True)
    out = {}
    for name, (full, views) in fulls.items():
        for key, view in views:
            view.copy_(state[key])
        out[name] = full
    return config, out, meta


__all__ = [
    "CHECKPOINTS",
    "COMMIT_MARKER",
    "CheckpointMismatch",
    "Committed",
    "Loaded",
    "checkpoint_root",
    "committed_checkpoints",
    "discard_after",
    "load_checkpoint",
    "load_full_state",
    "pieces",
    "prune",
    "read_meta",
    "save_checkpoint",
]

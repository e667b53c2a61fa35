"""Our model's tensors as training declares them: names, full shapes, sharding rules.

Everything here is read from ``training``: a tp=1 ``Transformer`` built on the meta device gives
the parameter names (the native layout's tensor names), the full shapes and, through
``sharding_plan``, each parameter's split. ``shard_slices`` from training says which pieces of
the full tensor make a rank's shard; the helpers below only move bytes according to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from training import (
    ModelConfig,
    Replicated,
    Shard,
    ShardSpec,
    TPGroup,
    Transformer,
    shard_slices,
    sharding_plan,
)
from training import meta_model as training_meta_model

_SINGLE = TPGroup(group=None, rank=0, world_size=1)


def meta_model(config: ModelConfig, group: object = None) -> Transformer:
    """training's Transformer on the meta device (no memory, no initialisation)."""
    return training_meta_model(config, group if group is not None else _SINGLE)


class Scratch:
    """Reusable buffers for the streaming engine, one per role ("full", "join", "piece", "cast").

    Every full tensor passes through a buffer; a fresh allocation per tensor costs a page fault
    per 4 KiB page (zero-filled by the kernel), which on a large checkpoint costs more than the
    copy itself. A tensor taken from a slot is valid until the slot is taken again.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, slot: str, shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        buffer = self._buffers.get(slot)
        if buffer is None or buffer.numel() < nbytes:
            self._buffers.pop(slot, None)
            buffer = torch.empty(max(nbytes, 64), dtype=torch.uint8)
            self._buffers[slot] = buffer
        return buffer[:nbytes].view(dtype).view(tuple(shape))


@dataclass(frozen=True)
class ModelLayout:
    config: ModelConfig
    names: tuple[str, ...]  # parameter order of the model: the order tensors are written in
    shapes: dict[str, tuple[int, ...]]  # full (unsharded) shapes
    specs: dict[str, ShardSpec]

    @classmethod
    def of(cls, config: ModelConfig) -> ModelLayout:
        # An explicit group of one: under torchrun, group=None would mean the whole world.
        model = meta_model(config, _SINGLE)
        params = list(model.named_parameters())
        return cls(
            config=config,
            names=tuple(n for n, _ in params),
            shapes={n: tuple(p.shape) for n, p in params},
            specs=sharding_plan(model),
        )

    def local_shape(self, name: str, rank: int, world: int) -> tuple[int, ...]:
        shape = list(self.shapes[name])
        spec = self.specs[name]
        if isinstance(spec, Shard):
            dim = spec.dim % len(shape)
            if shape[dim] % world:
                raise ValueError(f"{name}: size {shape[dim]} of dim {dim} is not divisible by {world}")
            shape[dim] //= world
        return tuple(shape)

    @property
    def parameter_count(self) -> int:
        total = 0
        for shape in self.shapes.values():
            numel = 1
            for n in shape:
                numel *= n
            total += numel
        return total


def rank_piece(
    full: torch.Tensor, spec: ShardSpec, rank: int, world: int, scratch: Scratch | None = None
) -> torch.Tensor:
    """Rank ``rank``'s shard of ``full``: a view when one contiguous slice suffices (replicated
    tensors, plain dim-0 splits), else a copy (into ``scratch``'s "piece" slot when given)."""
    if isinstance(spec, Replicated) or world == 1:
        return full
    pieces = [full[index] for index in shard_slices(spec, full.shape, rank, world)]
    if len(pieces) == 1 and pieces[0].is_contiguous():
        return pieces[0]
    dim = spec.dim % full.ndim
    if scratch is None:
        return torch.cat(pieces, dim=dim)
    shape = list(pieces[0].shape)
    shape[dim] = sum(p.shape[dim] for p in pieces)
    return torch.cat(pieces, dim=dim, out=scratch.take("piece", tuple(shape), full.dtype))


def local_block_sizes(spec: ShardSpec, full_shape: tuple[int, ...], world: int) -> list[int]:
    """Sizes, along the split dim, of the pieces a rank's shard is made of (one per fused block)."""
    if isinstance(spec, Replicated):
        return []
    return [
        idx[spec.dim % len(full_shape)].stop - idx[spec.dim % len(full_shape)].start
        for idx in shard_slices(spec, full_shape, 0, world)
    ]


def assemble(
    full_shape: tuple[int, ...],
    spec: ShardSpec,
    world: int,
    dtype: torch.dtype,
    local: Callable[[int], torch.Tensor],
    block_order: tuple[int, ...] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The full tensor from ``world`` shards, copied straight into one new tensor.

    ``local(rank)`` returns rank ``rank``'s shard (it may be a view of a memory-mapped file or of
    a scratch buffer; it is only read, and used up before ``local`` is called again). The result
    goes to ``out`` when given. ``block_order`` says in which order a shard stores the fused blocks when it is not
    ours (metaseq keeps each part's q|k|v as k|v|q: ``block_order=(1, 2, 0)``).
    """
    full = out if out is not None else torch.empty(full_shape, dtype=dtype)
    if isinstance(spec, Replicated):
        return full.copy_(local(0))
    dim = spec.dim % len(full_shape)
    sizes = local_block_sizes(spec, full_shape, world)
    order = block_order or tuple(range(len(sizes)))
    if sorted(order) != list(range(len(sizes))):
        raise ValueError(f"block order {order} does not match {len(sizes)} fused blocks")
    stored_offset, offset = {}, 0
    for block in order:  # where each of our blocks sits inside the stored shard
        stored_offset[block] = offset
        offset += sizes[block]
    for rank in range(world):
        shard = local(rank)
        for block, index in enumerate(shard_slices(spec, full_shape, rank, world)):
            full[index].copy_(shard.narrow(dim, stored_offset[block], sizes[block]))
    return full


def reorder_blocks(
    shard: torch.Tensor, spec: ShardSpec, full_shape: tuple[int, ...], world: int, block_order: tuple[int, ...]
) -> torch.Tensor:
    """A shard in our block order rewritten with its blocks in ``block_order``."""
    if not isinstance(spec, Shard):
        return shard
    dim = spec.dim % len(full_shape)
    pieces = shard.split(local_block_sizes(spec, full_shape, world), dim=dim)
    return torch.cat([pieces[i] for i in block_order], dim=dim)

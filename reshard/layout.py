"""Our model's tensors as training declares them: names, full shapes, sharding rules.

Everything here is read from ``training``: a tp=1 ``Transformer`` built on the meta device gives
the parameter names (the native layout's tensor names), the full shapes and, through
``sharding_plan``, each parameter's split. ``shard_slices`` from training says which pieces of
the full tensor make a rank's shard; the helpers below only move bytes according to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from training import ModelConfig, Replicated, Shard, ShardSpec, TPGroup, Transformer, shard_slices, sharding_plan

_SINGLE = TPGroup(group=None, rank=0, world_size=1)


@dataclass(frozen=True)
class ModelLayout:
    config: ModelConfig
    names: tuple[str, ...]  # parameter order of the model: the order tensors are written in
    shapes: dict[str, tuple[int, ...]]  # full (unsharded) shapes
    specs: dict[str, ShardSpec]

    @classmethod
    def of(cls, config: ModelConfig) -> ModelLayout:
        # An explicit group of one: under torchrun, group=None would mean the whole world.
        with torch.device("meta"):
            model = Transformer(config, _SINGLE)
        params = list(model.named_parameters())
        return cls(config=config, names=tuple(n for n, _ in params),
                   shapes={n: tuple(p.shape) for n, p in params}, specs=sharding_plan(model))

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


def rank_piece(full: torch.Tensor, spec: ShardSpec, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s shard of ``full``: a view when one contiguous slice suffices (replicated
    tensors, plain dim-0 splits), a new tensor otherwise."""
    if isinstance(spec, Replicated) or world == 1:
        return full
    pieces = [full[index] for index in shard_slices(spec, full.shape, rank, world)]
    if len(pieces) == 1 and pieces[0].is_contiguous():
        return pieces[0]
    return torch.cat(pieces, dim=spec.dim % full.ndim)


def local_block_sizes(spec: ShardSpec, full_shape: tuple[int, ...], world: int) -> list[int]:
    """Sizes, along the split dim, of the pieces a rank's shard is made of (one per fused block)."""
    if isinstance(spec, Replicated):
        return []
    return [idx[spec.dim % len(full_shape)].stop - idx[spec.dim % len(full_shape)].start
            for idx in shard_slices(spec, full_shape, 0, world)]


def assemble(full_shape: tuple[int, ...], spec: ShardSpec, world: int, dtype: torch.dtype,
             local: Callable[[int], torch.Tensor], block_order: tuple[int, ...] | None = None) -> torch.Tensor:
    """The full tensor from ``world`` shards, copied straight into one new tensor.

    ``local(rank)`` returns rank ``rank``'s shard (it may be a view of a memory-mapped file; it is
    only read). ``block_order`` says in which order a shard stores the fused blocks when it is not
    ours (metaseq keeps each part's q|k|v as k|v|q: ``block_order=(1, 2, 0)``).
    """
    if isinstance(spec, Replicated):
        return local(0).to(dtype, copy=True)
    full = torch.empty(full_shape, dtype=dtype)
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


def reorder_blocks(shard: torch.Tensor, spec: ShardSpec, full_shape: tuple[int, ...], world: int,
                   block_order: tuple[int, ...]) -> torch.Tensor:
    """A shard in our block order rewritten with its blocks in ``block_order``."""
    if not isinstance(spec, Shard):
        return shard
    dim = spec.dim % len(full_shape)
    pieces = shard.split(local_block_sizes(spec, full_shape, world), dim=dim)
    return torch.cat([pieces[i] for i in block_order], dim=dim)

"""Megatron-style tensor parallelism: the group handle, the communication autograd functions,
the sharding declarations and the parallel layers that declare them.

Every parameter's split is declared once, by the layer that owns it (``shard_specs()``), and read
through ``sharding_plan(model)`` by loading, saving and resharding. ``shard_tensor`` and
``merge_shards`` are the only two functions that cut and join tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------
# Process group
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TPGroup:
    """Tensor-parallel group with its rank and size resolved once.

    ``group=None`` means the whole world when torch.distributed is initialised and a group of
    one otherwise, so single-process use needs no distributed setup at all.
    """

    group: Any  # dist.ProcessGroup | None
    rank: int
    world_size: int

    @classmethod
    def resolve(cls, group: Any = None) -> TPGroup:
        if isinstance(group, TPGroup):
            return group
        if not (dist.is_available() and dist.is_initialized()):
            if group is not None:
                raise ValueError("a process group was given but torch.distributed is not initialised")
            return cls(group=None, rank=0, world_size=1)
        return cls(group=group, rank=dist.get_rank(group), world_size=dist.get_world_size(group))


def _all_reduce(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    if tp.world_size == 1:
        return x
    out = x.contiguous().clone()
    dist.all_reduce(out, group=tp.group)
    return out


def _all_gather(x: torch.Tensor, tp: TPGroup, dim: int) -> torch.Tensor:
    if tp.world_size == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(tp.world_size)]
    dist.all_gather(parts, x, group=tp.group)
    return torch.cat(parts, dim=dim)


class _CopyToTP(torch.autograd.Function):
    """Identity forward, all-reduce backward: the input of a column-parallel layer is replicated,
    so its gradient is the sum of every rank's partial gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
        ctx.tp = tp
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _all_reduce(grad, ctx.tp), None


class _ReduceFromTP(torch.autograd.Function):
    """All-reduce forward, identity backward: the output of a row-parallel layer."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
        return _all_reduce(x, tp)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _GatherFromTP(torch.autograd.Function):
    """All-gather along the last dim forward, keep own slice backward (vocab-parallel logits)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
        ctx.tp, ctx.local = tp, x.shape[-1]
        return _all_gather(x, tp, dim=-1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        start = ctx.tp.rank * ctx.local
        return grad[..., start : start + ctx.local].contiguous(), None


def copy_to_tp(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    return x if tp.world_size == 1 else _CopyToTP.apply(x, tp)


def reduce_from_tp(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    return x if tp.world_size == 1 else _ReduceFromTP.apply(x, tp)


def gather_from_tp(x: torch.Tensor, tp: TPGroup) -> torch.Tensor:
    return x if tp.world_size == 1 else _GatherFromTP.apply(x, tp)


# --------------------------------------------------------------------------------------------
# Sharding declarations
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replicated:
    """Every rank holds the whole tensor."""


@dataclass(frozen=True)
class Shard:
    """Split along ``dim`` into equal parts, one per rank.

    ``blocks`` lists the full sizes of fused sub-tensors laid end to end along ``dim``
    (q, k, v of a fused qkv; gate, up of a fused gate_up). Each block is split on its own and a
    rank's shard is its piece of every block, in block order; cutting the fused tensor in one go
    would hand rank 0 all of q and none of v.
    """

    dim: int
    blocks: tuple[int, ...] | None = None


ShardSpec = Shard | Replicated
REPLICATED = Replicated()


def shard_slices(
    spec: ShardSpec, full_shape: tuple[int, ...] | torch.Size, rank: int, world: int
) -> list[tuple[slice, ...]]:
    """Index tuples (into the full tensor) of the pieces that make rank ``rank``'s shard, in order."""
    full_shape = tuple(full_shape)
    everything = tuple(slice(0, n) for n in full_shape)
    if isinstance(spec, Replicated):
        return [everything]
    dim = spec.dim % len(full_shape)
    blocks = spec.blocks or (full_shape[dim],)
    if sum(blocks) != full_shape[dim]:
        raise ValueError(
            f"fused blocks {blocks} do not add up to size {full_shape[dim]} of dim {dim} in shape {full_shape}"
        )
    pieces, offset = [], 0
    for block in blocks:
        if block % world:
            raise ValueError(
                f"block of size {block} (dim {dim} of shape {full_shape}) cannot be split into {world} equal parts"
            )
        size = block // world
        index = list(everything)
        index[dim] = slice(offset + rank * size, offset + (rank + 1) * size)
        pieces.append(tuple(index))
        offset += block
    return pieces


def full_shape_of(local_shape: tuple[int, ...] | torch.Size, spec: ShardSpec, world: int) -> tuple[int, ...]:
    shape = list(local_shape)
    if isinstance(spec, Shard):
        shape[spec.dim % len(shape)] *= world
    return tuple(shape)


def shard_tensor(full: torch.Tensor, spec: ShardSpec, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s shard of ``full`` (a new contiguous tensor)."""
    pieces = [full[index] for index in shard_slices(spec, full.shape, rank, world)]
    if isinstance(spec, Replicated):
        return pieces[0].clone()
    return torch.cat(pieces, dim=spec.dim % full.ndim).contiguous()


def merge_shards(parts: list[torch.Tensor] | tuple[torch.Tensor, ...], spec: ShardSpec) -> torch.Tensor:
    """Inverse of ``shard_tensor`` over all ranks: ``merge_shards([shard_tensor(t, s, r, n) for r
    in range(n)], s)`` is bitwise ``t``."""
    if not parts:
        raise ValueError("merge_shards needs at least one shard")
    if isinstance(spec, Replicated):
        return parts[0].clone()
    world = len(parts)
    dim = spec.dim % parts[0].ndim
    blocks = spec.blocks or (parts[0].shape[dim] * world,)
    if sum(blocks) != parts[0].shape[dim] * world:
        raise ValueError(
            f"shards of size {parts[0].shape[dim]} x {world} do not match fused blocks {blocks} along dim {dim}"
        )
    merged: list[torch.Tensor] = []
    offset = 0
    for block in blocks:
        size = block // world
        merged.extend(part.narrow(dim, offset, size) for part in parts)
        offset += size
    return torch.cat(merged, dim=dim).contiguous()


def sharding_plan(model: nn.Module) -> dict[str, ShardSpec]:
    """Parameter name -> split, read from the layers' own declarations.

    A module with a ``shard_specs()`` method must declare every parameter it owns directly;
    parameters of any other module (norms, position tables) are replicated.
    """
    plan: dict[str, ShardSpec] = {}
    for module_name, module in model.named_modules():
        declared: dict[str, ShardSpec] = module.shard_specs() if hasattr(module, "shard_specs") else {}
        for param_name, _ in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            if hasattr(module, "shard_specs") and param_name not in declared:
                raise RuntimeError(f"{type(module).__name__} does not declare how parameter {full_name!r} is sharded")
            plan[full_name] = declared.get(param_name, REPLICATED)
    return plan


# --------------------------------------------------------------------------------------------
# Parallel layers
# --------------------------------------------------------------------------------------------


def _divide(total: int, world: int, what: str) -> int:
    if total % world:
        raise ValueError(f"{what}={total} is not divisible by tensor-parallel size {world}")
    return total // world


class ColumnParallelLinear(nn.Module):
    """y_local = x W_local^T + b_local; W split by output rows, output stays split."""

    def __init__(self, in_features: int, out_blocks: tuple[int, ...], *, bias: bool, tp: TPGroup) -> None:
        super().__init__()
        self.tp, self.out_blocks = tp, out_blocks
        local_out = sum(_divide(b, tp.world_size, "column-parallel output block") for b in out_blocks)
        self.weight = nn.Parameter(torch.empty(local_out, in_features))
        self.bias = nn.Parameter(torch.empty(local_out)) if bias else None

    def shard_specs(self) -> dict[str, ShardSpec]:
        blocks = self.out_blocks if len(self.out_blocks) > 1 else None
        specs: dict[str, ShardSpec] = {"weight": Shard(0, blocks)}
        if self.bias is not None:
            specs["bias"] = Shard(0, blocks)
        return specs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(copy_to_tp(x, self.tp), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = all_reduce(x_local W_local^T) + b; W split by input columns, bias added once after the
    reduce so it is not counted tp times."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool, tp: TPGroup) -> None:
        super().__init__()
        self.tp = tp
        self.weight = nn.Parameter(torch.empty(out_features, _divide(in_features, tp.world_size, "row-parallel input")))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def shard_specs(self) -> dict[str, ShardSpec]:
        specs: dict[str, ShardSpec] = {"weight": Shard(1)}
        if self.bias is not None:
            specs["bias"] = REPLICATED
        return specs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp.world_size == 1:
            return F.linear(x, self.weight, self.bias)  # one addmm instead of a matmul and an add
        y = reduce_from_tp(F.linear(x, self.weight), self.tp)
        return y if self.bias is None else y + self.bias


class VocabParallelEmbedding(nn.Module):
    """Rows [rank*V/tp, (rank+1)*V/tp) of the (padded) vocabulary live on each rank; ids outside a
    rank's range contribute zeros and the all-reduce fills them in from their owner."""

    def __init__(self, padded_vocab: int, dim: int, *, tp: TPGroup, tied_to_head: bool = False) -> None:
        super().__init__()
        self.tp = tp
        self.local_vocab = _divide(padded_vocab, tp.world_size, "padded vocabulary")
        self.start = tp.rank * self.local_vocab
        self.weight = nn.Parameter(torch.empty(self.local_vocab, dim))
        # When the LM head reuses this weight, the head's dense (V, dim) gradient reaches the
        # weight first; a sparse lookup gradient (only the rows of the B*T ids) is then added
        # into it in place. A dense one would cost a zero-filled (V, dim) buffer and a (V, dim)
        # add on every backward. The weight's .grad is dense either way; untied, it stays dense.
        self.sparse_grad = tied_to_head

    def shard_specs(self) -> dict[str, ShardSpec]:
        return {"weight": Shard(0)}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.world_size == 1:
            return F.embedding(ids, self.weight, sparse=self.sparse_grad)
        local = ids - self.start
        outside = (local < 0) | (local >= self.local_vocab)
        emb = F.embedding(local.masked_fill(outside, 0), self.weight, sparse=self.sparse_grad)  # (B, T, dim)
        emb = emb.masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tp(emb, self.tp)


class VocabParallelHead(nn.Module):
    """Untied LM head: column-parallel over the padded vocabulary, logits gathered on every rank."""

    def __init__(self, dim: int, padded_vocab: int, *, tp: TPGroup) -> None:
        super().__init__()
        self.tp = tp
        self.weight = nn.Parameter(torch.empty(_divide(padded_vocab, tp.world_size, "padded vocabulary"), dim))

    def shard_specs(self) -> dict[str, ShardSpec]:
        return {"weight": Shard(0)}

    def forward(self, x: torch.Tensor, vocab_size: int | None = None) -> torch.Tensor:
        return vocab_parallel_logits(x, self.weight, self.tp, vocab_size)


def vocab_parallel_logits(
    x: torch.Tensor, weight: torch.Tensor, tp: TPGroup, vocab_size: int | None = None
) -> torch.Tensor:
    """Logits (B, T, V_pad) gathered on every rank; (B, T, vocab_size) when ``vocab_size`` is
    given, dropping the padding rows.

    Slices only when there is padding: even a slice that keeps everything records a backward
    that zero-fills and copies a full-size gradient.
    """
    if tp.world_size == 1:
        if vocab_size is not None and vocab_size < weight.shape[0]:
            # Skip the padding rows in the matmul itself: the logits come out contiguous, where
            # slicing them afterwards leaves a strided view that the loss's reshape copies whole.
            weight = weight[:vocab_size]
        return F.linear(x, weight)  # (B, T, V)
    local = F.linear(copy_to_tp(x, tp), weight)  # (B, T, V_pad/tp)
    logits = gather_from_tp(local, tp)  # (B, T, V_pad)
    return logits if vocab_size is None or vocab_size == logits.shape[-1] else logits[..., :vocab_size]


def init_normal_(model: nn.Module, std: float = 0.02, seed: int | None = None) -> None:
    """Random init that gives the same *full* weights at every tp size: each parameter is drawn
    full-size from a generator seeded by its name, then sharded. Norm weights start at one,
    biases at zero."""
    tp_world = 1
    rank = 0
    for module in model.modules():
        group = getattr(module, "tp", None)
        if isinstance(group, TPGroup):
            tp_world, rank = group.world_size, group.rank
            break
    plan = sharding_plan(model)
    gen = torch.Generator()
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            full_shape = full_shape_of(param.shape, plan[name], tp_world)
            if param.ndim == 1:
                is_norm = "norm" in name
                full = torch.ones(full_shape) if (is_norm and leaf == "weight") else torch.zeros(full_shape)
            else:
                gen.manual_seed((seed or 0) * 1_000_003 + (hash_name(name) % (2**31)))
                full = torch.randn(full_shape, generator=gen) * std
            param.copy_(shard_tensor(full, plan[name], rank, tp_world))


def hash_name(name: str) -> int:
    # Python's hash() is salted per process; ranks must agree, so use a stable digest.
    value = 0
    for ch in name.encode():
        value = (value * 131 + ch) % (2**61 - 1)
    return value

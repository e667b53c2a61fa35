"""The paged KV cache: one pool of fixed-size blocks per rank, handed out to sequences.

``BlockPool`` is the bookkeeping (rank 0 only: free list and reference counts; samples of one
request share their prompt's blocks). ``PagedKVCache`` holds the tensors on every rank and is the
``training.model.AttentionCache`` the model calls: each layer's new keys and values are written to
their slots, then every sequence of the packed batch attends over its own blocks.

Shapes: N packed new tokens of all sequences (the model runs them as one B=1 batch), Hq/Hkv this
rank's query/key-value heads, D head_dim, S a sequence's context (cached + new tokens).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.config import ModelConfig


class BlockPool:
    """Free blocks and reference counts. A block is free when no sequence refers to it."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"a KV pool needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._refs = [0] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise RuntimeError("internal: KV block pool exhausted; the scheduler must check num_free first")
        block = self._free.popleft()
        self._refs[block] = 1
        return block

    def share(self, block: int) -> None:
        if self._refs[block] < 1:
            raise RuntimeError(f"internal: sharing free KV block {block}")
        self._refs[block] += 1

    def refs(self, block: int) -> int:
        return self._refs[block]

    def release(self, block: int) -> None:
        if self._refs[block] < 1:
            raise RuntimeError(f"internal: releasing free KV block {block}")
        self._refs[block] -= 1
        if self._refs[block] == 0:
            self._free.append(block)


def block_bytes(config: ModelConfig, *, block_size: int, tp_size: int, dtype: torch.dtype) -> int:
    """Bytes one block takes on one rank: keys and values of every layer."""
    per_token = 2 * config.n_layer * (config.kv_heads // tp_size) * config.attn_head_dim
    return per_token * block_size * torch.empty((), dtype=dtype).element_size()


@dataclass
class SeqChunk:
    """One sequence's share of a step: ``num_new`` tokens at positions [context, context + num_new)."""

    num_new: int
    context: int  # tokens already cached before this step
    block_table: list[int]


@dataclass
class _Prefill:
    start: int  # first packed row
    length: int
    slots: torch.Tensor | None  # (S,) context slots; None when nothing was cached (attend to k, v directly)
    mask: torch.Tensor | None  # (T, S) bool, True = may attend; None: plain causal


class PagedKVCache:
    def __init__(
        self,
        config: ModelConfig,
        *,
        num_blocks: int,
        block_size: int,
        tp_size: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.num_blocks, self.block_size = num_blocks, block_size
        self.n_kv_head, self.head_dim = config.kv_heads // tp_size, config.attn_head_dim
        self.gqa = config.kv_heads != config.n_head
        shape = (num_blocks * block_size, self.n_kv_head, self.head_dim)  # one row per token slot
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        self.device = torch.device(device)
        self._slots = torch.empty(0, dtype=torch.long)
        self._decode_rows: torch.Tensor | slice | None = None
        self._decode_index = torch.empty(0, dtype=torch.long)
        self._decode_mask = torch.empty(0, dtype=torch.bool)
        self._prefills: list[_Prefill] = []

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: give a sample its own copy of a shared block before it writes there."""
        bs = self.block_size
        for src, dst in copies:
            for cache in (*self.keys, *self.values):
                cache[dst * bs : (dst + 1) * bs] = cache[src * bs : (src + 1) * bs]

    def begin_step(self, chunks: list[SeqChunk]) -> None:
        """Work out, once per step, where each packed token is written and what each sequence
        attends over; every layer's ``attend`` then reuses it."""
        bs, dev = self.block_size, self.device
        slots: list[torch.Tensor] = []
        decode_rows: list[int] = []
        decode_tables: list[list[int]] = []
        decode_lens: list[int] = []
        self._prefills = []
        row = 0
        for chunk in chunks:
            table = torch.tensor(chunk.block_table, dtype=torch.long)
            total = chunk.context + chunk.num_new
            positions = torch.arange(chunk.context, total)
            slots.append(table[positions // bs] * bs + positions % bs)
            if chunk.num_new == 1 and chunk.context > 0:
                decode_rows.append(row)
                decode_tables.append(chunk.block_table)
                decode_lens.append(total)
            elif chunk.context == 0:
                self._prefills.append(_Prefill(row, chunk.num_new, None, None))
            else:
                context = torch.arange(total)
                ctx_slots = (table[context // bs] * bs + context % bs).to(dev)
                allowed = context[None, :] <= positions[:, None]  # (T, S)
                self._prefills.append(_Prefill(row, chunk.num_new, ctx_slots, allowed.to(dev)))
            row += chunk.num_new
        self._slots = torch.cat(slots).to(dev) if slots else torch.empty(0, dtype=torch.long, device=dev)
        self._decode_rows = None
        if decode_rows:
            width = max(len(t) for t in decode_tables)
            tables = torch.tensor([t + [0] * (width - len(t)) for t in decode_tables], dtype=torch.long)
            s_max = max(decode_lens)
            context = torch.arange(s_max)
            self._decode_index = (tables[:, context // bs] * bs + context % bs).to(dev)  # (Bd, S_max)
            lens = torch.tensor(decode_lens)
            self._decode_mask = (context[None, :] < lens[:, None])[:, None, None, :].to(dev)  # (Bd, 1, 1, S_max)
            # The scheduler puts decodes first: then their rows are a slice (views, no gather).
            prefix = decode_rows == list(range(len(decode_rows)))
            self._decode_rows = (
                slice(0, len(decode_rows)) if prefix else torch.tensor(decode_rows, dtype=torch.long, device=dev)
            )

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (1, Hq, N, D), k and v (1, Hkv, N, D) -> (1, Hq, N, D)."""
        k_cache, v_cache = self.keys[layer_idx], self.values[layer_idx]
        k_cache.index_copy_(0, self._slots, k[0].transpose(0, 1).to(k_cache.dtype))  # (N, Hkv, D)
        v_cache.index_copy_(0, self._slots, v[0].transpose(0, 1).to(v_cache.dtype))
        out = torch.empty_like(q)
        if self._decode_rows is not None:
            rows = self._decode_rows
            q_dec = q[0][:, rows].transpose(0, 1).unsqueeze(2)  # (Bd, Hq, 1, D)
            k_dec = k_cache[self._decode_index].transpose(1, 2)  # (Bd, S_max, Hkv, D) -> (Bd, Hkv, S_max, D)
            v_dec = v_cache[self._decode_index].transpose(1, 2)
            y = F.scaled_dot_product_attention(
                q_dec, k_dec, v_dec, attn_mask=self._decode_mask, enable_gqa=self.gqa
            )  # (Bd, Hq, 1, D)
            out[0][:, rows] = y[:, :, 0].transpose(0, 1)  # (Hq, Bd, D)
        for pre in self._prefills:
            span = slice(pre.start, pre.start + pre.length)
            q_pre = q[:, :, span]  # (1, Hq, T, D)
            if pre.slots is None:
                k_pre, v_pre = k[:, :, span], v[:, :, span]  # (1, Hkv, T, D)
            else:
                k_pre = k_cache[pre.slots].transpose(0, 1).unsqueeze(0)  # (S, Hkv, D) -> (1, Hkv, S, D)
                v_pre = v_cache[pre.slots].transpose(0, 1).unsqueeze(0)
            out[:, :, span] = F.scaled_dot_product_attention(
                q_pre, k_pre, v_pre, attn_mask=pre.mask, is_causal=pre.mask is None, enable_gqa=self.gqa
            )  # (1, Hq, T, D)
        return out

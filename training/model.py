"""The decoder stack for OPT, LLaMA and top-k MoE (Mixtral / GLaM pattern), tensor-parallel.

Shapes use B batch, T new tokens, S = cached + new tokens, H hidden, tp tensor-parallel size.
Every parallel layer knows its rank and world through a ``TPGroup``; with a group of one the
communication calls are skipped, so the same code runs on one CPU process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from training.config import ModelConfig
from training.parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    Shard,
    ShardSpec,
    TPGroup,
    VocabParallelEmbedding,
    VocabParallelHead,
    copy_to_tp,
    init_normal_,
    reduce_from_tp,
    vocab_parallel_logits,
)

# --------------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------------


@dataclass
class KVCache:
    """Preallocated keys/values, one (B_max, n_kv_head/tp, T_max, head_dim) pair per layer.

    ``seq_len`` slots are filled; the next forward writes its T tokens at slots
    [seq_len, seq_len + T). Slots are indices into the (possibly left-padded) batch, not
    position ids: positions are passed explicitly per token.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    seq_len: int = 0

    @classmethod
    def allocate(
        cls,
        config: ModelConfig,
        *,
        batch_size: int,
        max_seq_len: int,
        tp_size: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> KVCache:
        shape = (batch_size, config.kv_heads // tp_size, max_seq_len, config.attn_head_dim)
        keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer)]
        return cls(keys, values)

    @property
    def max_batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def max_seq_len(self) -> int:
        return self.keys[0].shape[2]

    def reset(self) -> None:
        self.seq_len = 0


class AttentionCache(Protocol):
    """A cache that keeps keys/values in its own layout and computes attention over them (the
    inference engine's paged cache, where one forward packs many sequences into B=1).

    ``Attention`` hands it each layer's new q, k, v after rotary embeddings; ``attend`` stores k
    and v and returns the attention output. ``Transformer.forward`` then builds no mask of its
    own and needs explicit ``positions``.
    """

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, n_head/tp, T, head_dim), k and v (B, n_kv_head/tp, T, head_dim) ->
        (B, n_head/tp, T, head_dim)."""
        ...


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """As transformers' LlamaRMSNorm: normalise in fp32, cast back, then scale."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.family == "opt":
        return nn.LayerNorm(config.n_embd, eps=1e-5)
    return RMSNorm(config.n_embd, config.norm_eps)


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (B, 1, T, head_dim) in the rotate-half layout, computed in fp32 as
    transformers does, then cast."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim)
    )
    freqs = positions[..., None].float() * inv_freq  # (B, T, head_dim/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, head_dim)
    return emb.cos().to(dtype).unsqueeze(1), emb.sin().to(dtype).unsqueeze(1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, tp: TPGroup) -> None:
        super().__init__()
        self.layer_idx, self.tp = layer_idx, tp
        self.head_dim = config.attn_head_dim
        self.n_head = config.n_head // tp.world_size
        self.n_kv_head = config.kv_heads // tp.world_size
        q_size, kv_size = config.n_head * self.head_dim, config.kv_heads * self.head_dim
        # q, k and v fused into one column-parallel matmul; blocks keep each rank's heads together.
        self.qkv = ColumnParallelLinear(config.n_embd, (q_size, kv_size, kv_size), bias=config.bias, tp=tp)
        self.out = RowParallelLinear(q_size, config.n_embd, bias=config.bias, tp=tp)
        self.rotary, self.rope_theta = config.rotary, config.rope_theta

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
        cache: KVCache | AttentionCache | None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self.qkv(x)  # (B, T, (n_head + 2 n_kv_head)/tp * head_dim)
        q, k, v = qkv.split(
            [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim], dim=-1
        )
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, n_head/tp, T, head_dim)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv_head/tp, T, head_dim)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, n_kv_head/tp, T, head_dim)
        if rope is not None:
            cos, sin = rope
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if cache is not None and not isinstance(cache, KVCache):
            y = cache.attend(self.layer_idx, q, k, v)  # (B, n_head/tp, T, head_dim)
            return self.out(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
        if cache is not None:
            start = cache.seq_len
            cache.keys[self.layer_idx][:B, :, start : start + T] = k
            cache.values[self.layer_idx][:B, :, start : start + T] = v
            k = cache.keys[self.layer_idx][:B, :, : start + T]  # (B, n_kv_head/tp, S, head_dim)
            v = cache.values[self.layer_idx][:B, :, : start + T]
        if self.n_kv_head != self.n_head:
            rep = self.n_head // self.n_kv_head
            S = k.shape[2]
            k = k[:, :, None].expand(B, self.n_kv_head, rep, S, self.head_dim).reshape(B, self.n_head, S, self.head_dim)
            v = v[:, :, None].expand(B, self.n_kv_head, rep, S, self.head_dim).reshape(B, self.n_head, S, self.head_dim)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None
        )  # (B, n_head/tp, T, head_dim)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)  # (B, T, n_head/tp * head_dim)
        return self.out(y)


class OPTMLP(nn.Module):
    def __init__(self, config: ModelConfig, tp: TPGroup) -> None:
        super().__init__()
        self.fc1 = ColumnParallelLinear(config.n_embd, (config.ffn_dim,), bias=True, tp=tp)
        self.fc2 = RowParallelLinear(config.ffn_dim, config.n_embd, bias=True, tp=tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


class SwiGLU(nn.Module):
    def __init__(self, config: ModelConfig, tp: TPGroup) -> None:
        super().__init__()
        self.gate_up = ColumnParallelLinear(config.n_embd, (config.ffn_dim, config.ffn_dim), bias=False, tp=tp)
        self.down = RowParallelLinear(config.ffn_dim, config.n_embd, bias=False, tp=tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # 2 x (B, T, ffn/tp)
        return self.down(F.silu(gate) * up)


@dataclass
class RouterStats:
    """Per-layer sums for the load-balancing loss, kept as sums so layers combine the way
    transformers' ``load_balancing_loss_func`` concatenates them."""

    assignments: torch.Tensor  # (E,) top-k picks per expert (weighted by the padding mask)
    prob_sum: torch.Tensor  # (E,) summed router probabilities (differentiable)
    rows: torch.Tensor  # () tokens counted


class MoE(nn.Module):
    """Top-k of ``n_expert`` SwiGLU experts (Mixtral routing: fp32 softmax over all experts, top-k,
    renormalise; dropless). Each expert is tensor-parallel inside: a rank holds ffn/tp of every
    expert, so the block ends in one all-reduce like a dense row-parallel FFN."""

    def __init__(self, config: ModelConfig, tp: TPGroup) -> None:
        super().__init__()
        self.tp, self.top_k, self.n_expert, self.ffn_dim = tp, config.top_k, config.n_expert, config.ffn_dim
        local_ffn = config.ffn_dim // tp.world_size
        self.router = nn.Linear(config.n_embd, config.n_expert, bias=False)  # replicated
        self.gate_up = nn.Parameter(torch.empty(config.n_expert, 2 * local_ffn, config.n_embd))  # (E, 2 ffn/tp, H)
        self.down = nn.Parameter(torch.empty(config.n_expert, config.n_embd, local_ffn))  # (E, H, ffn/tp)

    def shard_specs(self) -> dict[str, ShardSpec]:
        return {"gate_up": Shard(1, (self.ffn_dim, self.ffn_dim)), "down": Shard(2)}

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None) -> tuple[torch.Tensor, RouterStats]:
        B, T, H = x.shape
        h = x.reshape(B * T, H)  # (N, H)
        logits = self.router(h)  # (N, E)
        probs = torch.softmax(logits.float(), dim=-1)
        top_w, top_i = probs.topk(self.top_k, dim=-1)  # (N, k)
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        # The weights scale this rank's partial expert outputs, so their gradient is partial too:
        # all-reduce it in backward (as for any replicated input of a parallel layer).
        top_w = copy_to_tp(top_w, self.tp)
        h = copy_to_tp(h, self.tp)

        flat_expert = top_i.reshape(-1)  # (N k,)
        order = flat_expert.argsort(stable=True)
        counts = torch.bincount(flat_expert, minlength=self.n_expert)
        token = order // self.top_k  # (N k,) token of each sorted assignment
        x_sorted = h[token]  # (N k, H)
        outs: list[torch.Tensor] = []
        offset = 0
        for expert, count in enumerate(counts.tolist()):
            if count == 0:
                continue
            xe = x_sorted[offset : offset + count]
            gate, up = F.linear(xe, self.gate_up[expert]).chunk(2, dim=-1)  # 2 x (count, ffn/tp)
            outs.append(F.linear(F.silu(gate) * up, self.down[expert]))  # (count, H)
            offset += count
        y = torch.cat(outs) * top_w.reshape(-1)[order, None]  # fp32 like transformers' weights
        out = torch.zeros(B * T, H, dtype=y.dtype, device=x.device).index_add_(0, token, y)
        out = reduce_from_tp(out.to(x.dtype), self.tp).view(B, T, H)

        if token_mask is None:
            weight = torch.ones(B * T, device=x.device)
        else:
            weight = token_mask.reshape(-1).to(torch.float32)
        picks = torch.zeros(self.n_expert, device=x.device).index_add_(
            0, flat_expert, weight.repeat_interleave(self.top_k)
        )
        stats = RouterStats(picks, (probs * weight[:, None]).sum(0), weight.sum())
        return out, stats


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, tp: TPGroup) -> None:
        super().__init__()
        self.pre_norm = config.pre_norm
        self.attn_norm = make_norm(config)
        self.attn = Attention(config, layer_idx, tp)
        self.mlp_norm = make_norm(config)
        self.mlp: nn.Module
        if config.is_moe_layer(layer_idx):
            self.mlp = MoE(config, tp)
        elif config.family == "opt":
            self.mlp = OPTMLP(config, tp)
        else:
            self.mlp = SwiGLU(config, tp)

    def _ffn(self, x: torch.Tensor, token_mask: torch.Tensor | None, stats: list[RouterStats]) -> torch.Tensor:
        if isinstance(self.mlp, MoE):
            out, layer_stats = self.mlp(x, token_mask)
            stats.append(layer_stats)
            return out
        return self.mlp(x)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
        cache: KVCache | AttentionCache | None,
        token_mask: torch.Tensor | None,
        stats: list[RouterStats],
    ) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.attn(self.attn_norm(x), rope, mask, cache)
            return x + self._ffn(self.mlp_norm(x), token_mask, stats)
        # OPT-350M: post-norm
        x = self.attn_norm(x + self.attn(x, rope, mask, cache))
        return self.mlp_norm(x + self._ffn(x, token_mask, stats))


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class Transformer(nn.Module):
    """Decoder-only LM. ``forward(ids)`` returns logits (B, T, vocab_size) over the full real
    vocabulary on every rank."""

    def __init__(self, config: ModelConfig, group: object = None) -> None:
        super().__init__()
        tp = TPGroup.resolve(group)
        config.check_tp(tp.world_size)
        self.config, self.tp = config, tp
        self.embed = VocabParallelEmbedding(config.padded_vocab_size, config.embed_dim, tp=tp, tied_to_head=config.tied)
        if config.family == "opt":
            # OPT's learned positions keep 2 extra rows: ids are offset by 2 (a metaseq quirk).
            self.pos_embed = nn.Embedding(config.max_seq_len + 2, config.n_embd)
        if config.word_embed_proj_dim is not None:
            self.project_in = nn.Linear(config.embed_dim, config.n_embd, bias=False)
            self.project_out = nn.Linear(config.n_embd, config.embed_dim, bias=False)
        self.layers = nn.ModuleList(Block(config, i, tp) for i in range(config.n_layer))
        # Post-norm OPT (350M) has no final norm: each block already ends in one.
        self.final_norm = make_norm(config) if config.pre_norm else None
        self.lm_head = None if config.tied else VocabParallelHead(config.embed_dim, config.padded_vocab_size, tp=tp)

    def allocate_kv_cache(self, batch_size: int, max_seq_len: int) -> KVCache:
        param = self.embed.weight
        return KVCache.allocate(
            self.config,
            batch_size=batch_size,
            max_seq_len=max_seq_len,
            tp_size=self.tp.world_size,
            dtype=param.dtype,
            device=param.device,
        )

    def default_positions(
        self, attention_mask: torch.Tensor | None, T: int, start: int, device: torch.device
    ) -> torch.Tensor:
        """Position ids (B, T): count of real tokens before each token (so left padding does not
        shift positions). OPT pads get -1 (row 1 of the position table) exactly as transformers."""
        if attention_mask is None:
            return torch.arange(start, start + T, device=device).unsqueeze(0)  # (1, T)
        mask = attention_mask.long()
        positions = (torch.cumsum(mask, dim=1) * mask - 1)[:, -T:]  # (B, T)
        return positions if self.config.family == "opt" else positions.clamp(min=0)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        kv_cache: KVCache | AttentionCache | None = None,
        return_aux_loss: bool = False,
        logits_at: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """input_ids (B, T); attention_mask (B, S) with 1 for real tokens and 0 for padding, covering
        cached tokens too (S = kv_cache.seq_len + T); positions (B, T) override the default ids.

        With ``return_aux_loss`` also returns the load-balancing loss (unscaled; multiply by
        ``config.router_aux_loss_coef``), or None for a dense model.

        ``kv_cache`` may also be an ``AttentionCache`` (which needs ``positions``). ``logits_at``
        (R,) picks the tokens along T whose logits are computed, giving (B, R, vocab_size): a
        server needs only each sequence's last token, and the head is the costliest matmul.
        """
        cfg = self.config
        B, T = input_ids.shape
        dense_cache = kv_cache if isinstance(kv_cache, KVCache) else None
        if kv_cache is not None and dense_cache is None and positions is None:
            raise ValueError("an AttentionCache needs explicit positions (B, T)")
        start = dense_cache.seq_len if dense_cache is not None else 0
        S = start + T
        if dense_cache is not None and (B > dense_cache.max_batch or S > dense_cache.max_seq_len):
            raise ValueError(
                f"kv_cache holds {dense_cache.max_batch} x {dense_cache.max_seq_len} tokens; "
                f"batch {B} with {S} tokens does not fit: allocate a larger cache"
            )
        if attention_mask is not None and attention_mask.shape != (B, S):
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}; expected (B, cached + new) = {(B, S)}"
            )
        if positions is None:
            positions = self.default_positions(attention_mask, T, start, input_ids.device)

        x = self.embed(input_ids)  # (B, T, embed_dim)
        if cfg.word_embed_proj_dim is not None:
            x = self.project_in(x)  # (B, T, H)
        if cfg.family == "opt":
            x = x + self.pos_embed(positions + 2)
        rope = rope_cos_sin(positions, cfg.attn_head_dim, cfg.rope_theta, x.dtype) if cfg.rotary else None

        mask = None
        if attention_mask is not None or start > 0:
            # Additive mask (B, 1, T, S) with the dtype minimum rather than -inf, as transformers
            # does, so rows that see only padding stay finite instead of NaN.
            q_slot = torch.arange(start, S, device=x.device)[:, None]  # (T, 1)
            allowed = torch.arange(S, device=x.device)[None, :] <= q_slot  # (T, S)
            allowed = allowed[None, None]  # (1, 1, T, S)
            if attention_mask is not None:
                allowed = allowed & attention_mask.bool()[:, None, None, :]  # (B, 1, T, S)
            mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(
                ~allowed, torch.finfo(x.dtype).min
            )

        token_mask = attention_mask[:, -T:] if attention_mask is not None else None
        stats: list[RouterStats] = []
        for block in self.layers:
            x = block(x, rope, mask, kv_cache, token_mask, stats)
        if dense_cache is not None:
            dense_cache.seq_len = S
        if logits_at is not None:
            x = x[:, logits_at]  # (B, R, H)
        if self.final_norm is not None:
            x = self.final_norm(x)
        if cfg.word_embed_proj_dim is not None:
            x = self.project_out(x)  # (B, T, embed_dim)
        # Padding rows of the vocabulary dropped: (B, T, V).
        if self.lm_head is None:
            logits = vocab_parallel_logits(x, self.embed.weight, self.tp, cfg.vocab_size)
        else:
            logits = self.lm_head(x, cfg.vocab_size)
        if not return_aux_loss:
            return logits
        return logits, load_balancing_loss(stats, cfg.n_expert)


def load_balancing_loss(stats: list[RouterStats], n_expert: int) -> torch.Tensor | None:
    """Switch/Mixtral auxiliary loss: E * sum_e(fraction of picks to e * mean probability of e),
    over all MoE layers' tokens together (as transformers concatenates the layers' logits)."""
    if not stats:
        return None
    rows = torch.stack([s.rows for s in stats]).sum()
    picks = torch.stack([s.assignments for s in stats]).sum(0) / rows
    probs = torch.stack([s.prob_sum for s in stats]).sum(0) / rows
    return n_expert * torch.sum(picks * probs)


@contextlib.contextmanager
def _no_default_init() -> Iterator[None]:
    """Skip torch.nn's default initialisers while building on the meta device: they do nothing
    useful there, and on meta ``normal_`` pulls in torch's compiler stack (seconds per build)."""
    classes = (nn.Linear, nn.Embedding, nn.LayerNorm)
    saved = [(cls, cls.reset_parameters) for cls in classes]
    try:
        for cls in classes:
            cls.reset_parameters = lambda self: None  # type: ignore[method-assign]
        yield
    finally:
        for cls, method in saved:
            cls.reset_parameters = method  # type: ignore[method-assign]


def meta_model(config: ModelConfig, group: object = None) -> Transformer:
    """The model on the meta device: shapes and sharding only, no memory, no initialisation."""
    with _no_default_init(), torch.device("meta"):
        return Transformer(config, group)


def build_model(
    config: ModelConfig,
    *,
    group: object = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int | None = 0,
) -> Transformer:
    """A randomly initialised model; the full weights are the same whatever the tp size."""
    model = meta_model(config, group)
    model.to_empty(device=device)
    init_normal_(model, seed=seed)
    return model.to(dtype)


__all__ = ["AttentionCache", "KVCache", "Transformer", "build_model", "load_balancing_loss", "meta_model"]

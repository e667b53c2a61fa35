"""The training loss: next-token cross-entropy computed vocab-parallel, never gathering the logits.

Each tensor-parallel rank holds V_pad/tp rows of the LM head, so it computes only its slice of
the logits (B, T, V_pad/tp). The softmax normaliser and the target's logit are assembled with
three all-reduces of (B, T) tensors (max, sum of exponentials, target logit), as in Megatron-LM:
the full (B, T, V) logits never exist on any rank. Padding rows of the vocabulary (ids >=
``vocab_size``) are masked out, so the loss equals transformers' over the real vocabulary.

``TrainModule`` wraps a ``Transformer`` so that one ``forward`` returns the summed loss: data
parallelism (DDP) wraps this module, and its forward is where DDP's hooks run.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from training.model import Transformer, load_balancing_loss, rope_cos_sin
from training.parallel import TPGroup, copy_to_tp

IGNORE_INDEX = -100


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-token CE from this rank's logit columns [vocab_start, vocab_start + V_local)."""

    @staticmethod
    def forward(
        ctx: Any,
        local_logits: torch.Tensor,
        targets: torch.Tensor,
        vocab_start: int,
        vocab_size: int,
        tp: TPGroup,
    ) -> torch.Tensor:
        logits = local_logits.float()  # (B, T, V_local); fp32 even under bf16 autocast
        local_vocab = logits.shape[-1]
        padding = vocab_start + local_vocab - vocab_size
        if padding > 0:  # rows past the real vocabulary never win the softmax
            logits = logits.clone()
            logits[..., local_vocab - padding :] = float("-inf")
        logits_max = logits.max(dim=-1).values  # (B, T)
        if tp.world_size > 1:
            dist.all_reduce(logits_max, op=dist.ReduceOp.MAX, group=tp.group)
        shifted = logits - logits_max.unsqueeze(-1)  # (B, T, V_local)

        local_target = targets - vocab_start
        mine = (local_target >= 0) & (local_target < local_vocab)  # (B, T) target column on this rank
        index = local_target.masked_fill(~mine, 0).unsqueeze(-1)  # (B, T, 1)
        target_logit = shifted.gather(-1, index).squeeze(-1).masked_fill(~mine, 0.0)  # (B, T)

        exp = shifted.exp_()  # (B, T, V_local), in place: the shifted logits are not needed again
        sum_exp = exp.sum(dim=-1)  # (B, T)
        if tp.world_size > 1:
            both = torch.stack([target_logit, sum_exp])  # one all-reduce for the two sums
            dist.all_reduce(both, group=tp.group)
            target_logit, sum_exp = both[0], both[1]
        loss = torch.log(sum_exp) - target_logit  # (B, T)

        softmax = exp.div_(sum_exp.unsqueeze(-1))  # (B, T, V_local)
        ctx.save_for_backward(softmax, mine, index)
        ctx.input_dtype = local_logits.dtype
        return loss

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        softmax, mine, index = ctx.saved_tensors
        grad = softmax  # d loss / d logits = softmax - one_hot(target); reused in place
        grad.scatter_add_(-1, index, -mine.unsqueeze(-1).to(grad.dtype))
        grad.mul_(grad_loss.unsqueeze(-1))
        return grad.to(ctx.input_dtype), None, None, None, None


def vocab_parallel_cross_entropy(
    local_logits: torch.Tensor, targets: torch.Tensor, *, vocab_start: int, vocab_size: int, tp: TPGroup
) -> torch.Tensor:
    """Per-token loss (B, T) from this rank's logit slice (B, T, V_pad/tp); targets (B, T) hold
    global ids, ``IGNORE_INDEX`` for positions that do not count (their loss is 0)."""
    ignored = targets == IGNORE_INDEX
    safe = targets.masked_fill(ignored, 0)
    loss = _VocabParallelCrossEntropy.apply(local_logits, safe, vocab_start, vocab_size, tp)
    return loss.masked_fill(ignored, 0.0)


def hidden_states(
    model: Transformer, input_ids: torch.Tensor, *, activation_checkpointing: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The decoder trunk of ``model`` up to the LM head: (B, T, embed_dim) and the unscaled MoE
    load-balancing loss (None for a dense model).

    The same computation as ``Transformer.forward`` for full sequences without padding or cache
    (positions 0..T-1, causal attention); training packs documents, so there is no padding. With
    ``activation_checkpointing`` each block's activations are recomputed in backward.
    """
    cfg = model.config
    _, T = input_ids.shape
    positions = torch.arange(T, device=input_ids.device).unsqueeze(0)  # (1, T)
    x = model.embed(input_ids)  # (B, T, embed_dim)
    if cfg.word_embed_proj_dim is not None:
        x = model.project_in(x)  # (B, T, H)
    if cfg.family == "opt":
        x = x + model.pos_embed(positions + 2)
    rope = rope_cos_sin(positions, cfg.attn_head_dim, cfg.rope_theta, x.dtype) if cfg.rotary else None
    stats: list[Any] = []
    for block in model.layers:
        if activation_checkpointing:
            # Recomputing a MoE block appends its router stats a second time during backward;
            # the aux loss below was already built from the first pass, so that is harmless.
            x = checkpoint(block, x, rope, None, None, None, stats, use_reentrant=False)
        else:
            x = block(x, rope, None, None, None, stats)
    if model.final_norm is not None:
        x = model.final_norm(x)
    if cfg.word_embed_proj_dim is not None:
        x = model.project_out(x)  # (B, T, embed_dim)
    return x, load_balancing_loss(stats, cfg.n_expert)


class TrainModule(nn.Module):
    """``forward(input_ids, targets)`` -> (ce_sum, aux): the next-token CE summed over targets
    that are not ``IGNORE_INDEX`` (the caller divides by the global count, so the mean is over
    the whole data-parallel batch) and the unscaled MoE aux loss (None for dense models). A plain
    tuple, because DDP looks for the tensors of the output to hook its gradient reduction."""

    def __init__(self, model: Transformer, *, activation_checkpointing: bool = False) -> None:
        super().__init__()
        self.model = model
        self.activation_checkpointing = activation_checkpointing

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        model, cfg, tp = self.model, self.model.config, self.model.tp
        x, aux = hidden_states(model, input_ids, activation_checkpointing=self.activation_checkpointing)
        weight = model.embed.weight if model.lm_head is None else model.lm_head.weight  # (V_pad/tp, embed_dim)
        if tp.world_size == 1:
            # One rank holds the whole head: torch's fused CE over the real rows only. Slice only when
            # there are padding rows: even a slice that keeps everything records a backward that
            # zero-fills and copies a full-size gradient.
            head = weight[: cfg.vocab_size] if weight.shape[0] != cfg.vocab_size else weight
            logits = F.linear(x, head)  # (B, T, V)
            ce_sum = F.cross_entropy(
                logits.float().reshape(-1, cfg.vocab_size),
                targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
            )
            return ce_sum, aux
        local = F.linear(copy_to_tp(x, tp), weight)  # (B, T, V_pad/tp)
        per_token = vocab_parallel_cross_entropy(
            local, targets, vocab_start=tp.rank * weight.shape[0], vocab_size=cfg.vocab_size, tp=tp
        )
        return per_token.sum(), aux


__all__ = ["IGNORE_INDEX", "TrainModule", "hidden_states", "vocab_parallel_cross_entropy"]

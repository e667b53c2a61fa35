"""Per-request sampling parameters and the sampler that turns a logits row into the next token.

Every random draw comes from the sequence's own ``torch.Generator`` (seeded from the request's
``seed``), one uniform number per token, and every row is processed on its own: a seeded request
gives the same tokens whatever else shares its batch.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int | None = None
    logprobs: int | None = None  # top alternatives per generated token; None: no logprobs
    prompt_logprobs: bool = False  # logprobs of the prompt's own tokens (echo + logprobs)
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalised(self) -> bool:
        return bool(self.logit_bias) or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def make_generator(seed: int | None, sample_index: int) -> torch.Generator:
    """The generator of sample ``sample_index`` of a request. Samples of one seeded request get
    different, reproducible streams; unseeded requests get fresh entropy."""
    gen = torch.Generator()
    if seed is None:
        gen.manual_seed(secrets.randbits(63))
    else:
        gen.manual_seed((seed * 1_000_003 + sample_index) % (2**63))
    return gen


@dataclass
class TokenLogprobs:
    """Logprob of the chosen token and the top alternatives, from the model's own distribution
    (log_softmax of the raw logits, before temperature, penalties or bias)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


def logprobs_of(logits_row: torch.Tensor, token_id: int, top_k: int) -> TokenLogprobs:
    logprobs = torch.log_softmax(logits_row.float(), dim=-1)
    top: list[tuple[int, float]] = []
    if top_k > 0:
        values, ids = logprobs.topk(min(top_k, logprobs.shape[-1]))
        top = list(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenLogprobs(token_id, float(logprobs[token_id]), top)


def prompt_logprobs(logits: torch.Tensor, next_ids: list[int], top_k: int) -> list[TokenLogprobs]:
    """logits (T, V) of T consecutive positions and the T tokens that follow them."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # (T, V)
    chosen = logprobs.gather(1, torch.tensor(next_ids, dtype=torch.long)[:, None])[:, 0].tolist()
    tops: list[list[tuple[int, float]]] = [[] for _ in next_ids]
    if top_k > 0:
        values, ids = logprobs.topk(min(top_k, logprobs.shape[-1]), dim=-1)
        tops = [list(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
    return [TokenLogprobs(t, lp, top) for t, lp, top in zip(next_ids, chosen, tops, strict=True)]


def choose_token(
    logits_row: torch.Tensor, params: SamplingParams, generator: torch.Generator, output_ids: list[int]
) -> int:
    """The next token for one sequence from its logits row (V,)."""
    row = logits_row.float()
    if params.penalised:
        row = row.clone()
        if output_ids and (params.presence_penalty or params.frequency_penalty):
            # OpenAI's definition, over the tokens generated so far (not the prompt).
            counts = torch.bincount(torch.tensor(output_ids, dtype=torch.long), minlength=row.shape[0])
            counts = counts[: row.shape[0]].to(row.dtype)
            row -= counts * params.frequency_penalty + (counts > 0).to(row.dtype) * params.presence_penalty
        for token_id, bias in params.logit_bias.items():
            row[token_id] += bias
    if params.greedy:
        return int(row.argmax())
    row = row / params.temperature
    candidates: torch.Tensor | None = None  # token ids of row's entries when cut down
    if 0 < params.top_k < row.shape[0]:
        row, candidates = row.topk(params.top_k)
    if params.top_p < 1.0:
        row, order = row.sort(descending=True)
        candidates = order if candidates is None else candidates[order]
        probs = torch.softmax(row, dim=-1)
        # Keep the smallest head whose mass reaches top_p (always at least one token).
        keep = int((probs.cumsum(0) - probs < params.top_p).sum().clamp(min=1))
        row, candidates = row[:keep], candidates[:keep]
    probs = torch.softmax(row, dim=-1)
    cdf = probs.cumsum(0)
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    index = int(torch.searchsorted(cdf, torch.tensor([u * float(cdf[-1])], dtype=cdf.dtype), right=True))
    index = min(index, row.shape[0] - 1)
    return int(candidates[index]) if candidates is not None else index

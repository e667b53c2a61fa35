"""The sampler on hand-made logits: greedy, bias, penalties, top-k/top-p cuts, seeded draws."""

from __future__ import annotations

import torch

from inference_worker.sampling import SamplingParams, choose_token, make_generator

LOGITS = torch.tensor([2.0, 1.9, 0.5, -1.0, 0.0])


def pick(params: SamplingParams, outputs: list[int] | None = None, seed: int = 0, logits: torch.Tensor = LOGITS) -> int:
    return choose_token(logits, params, make_generator(seed, 0), outputs or [])


def test_greedy_bias_and_penalties() -> None:
    greedy = SamplingParams(temperature=0.0)
    assert pick(greedy) == 0
    assert pick(SamplingParams(temperature=0.0, logit_bias={3: 100.0})) == 3
    assert pick(SamplingParams(temperature=0.0, logit_bias={0: -100.0})) == 1
    # Token 0 already generated: a presence penalty of 0.5 drops it below token 1 (2.0-0.5 < 1.9).
    assert pick(SamplingParams(temperature=0.0, presence_penalty=0.5), outputs=[0]) == 1
    # Frequency penalties grow with the count: once is not enough at 0.05, three times is.
    assert pick(SamplingParams(temperature=0.0, frequency_penalty=0.05), outputs=[0]) == 0
    assert pick(SamplingParams(temperature=0.0, frequency_penalty=0.05), outputs=[0, 0, 0]) == 1
    # Negative penalties encourage repetition.
    assert pick(SamplingParams(temperature=0.0, presence_penalty=-2.0), outputs=[2]) == 2  # 0.5 + 2 > 2.0


def test_cuts_and_seeds() -> None:
    for seed in range(20):
        assert pick(SamplingParams(temperature=1.0, top_k=1), seed=seed) == 0
        assert pick(SamplingParams(temperature=1.0, top_p=1e-6), seed=seed) == 0
        assert pick(SamplingParams(temperature=1.0, top_k=2), seed=seed) in (0, 1)
    # top_p=0.5 keeps the smallest head reaching half the mass: tokens 0 and 1 here.
    assert {pick(SamplingParams(temperature=1.0, top_p=0.5), seed=s) for s in range(50)} == {0, 1}
    drawn = [pick(SamplingParams(temperature=1.0, seed=5), seed=5) for _ in range(3)]
    assert len(set(drawn)) == 1, "one seed, one draw"


def test_draws_follow_the_distribution() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    gen = make_generator(123, 0)
    counts = torch.zeros(3)
    for _ in range(3000):
        counts[choose_token(logits, SamplingParams(temperature=1.0), gen, [])] += 1
    assert torch.allclose(counts / 3000, torch.tensor([0.5, 0.3, 0.2]), atol=0.03)
    # A low temperature sharpens towards the top token.
    cold = sum(choose_token(logits, SamplingParams(temperature=0.1), gen, []) == 0 for _ in range(500))
    assert cold > 480

"""tp=2 (two gloo processes): rank 0 schedules and samples, both ranks run every forward. Greedy
tokens equal transformers', logprobs match its log_softmax, seeded samples equal tp=1's."""

from __future__ import annotations

from pathlib import Path

import pytest
from _engine_helpers import (
    hf_greedy,
    hf_logprobs,
    make_engine,
    run_staggered,
    sample_tokens,
    tp_engine_worker,
    tp_requests,
)
from _tiny import hf_model

from tests.training._dist import run_distributed

pytestmark = pytest.mark.slow
MODELS = ["opt", "llama", "mixtral"]


@pytest.fixture(scope="module")
def tp2_results(checkpoints: dict[str, Path]) -> dict[str, dict[str, dict]]:
    ranks = run_distributed(tp_engine_worker, 2, {name: str(checkpoints[name]) for name in MODELS})
    assert ranks[1] == {}, "only rank 0 samples and reports"
    return ranks[0]


@pytest.mark.parametrize("name", MODELS)
def test_tp2_greedy_and_logprobs_equal_transformers(tp2_results: dict, name: str) -> None:
    assert tp2_results[f"{name}:tp"]["size"] == 2
    hf = hf_model(name)
    requests = tp_requests()
    for index, (_, prompt, params) in enumerate(requests):
        if params.temperature != 0.0:
            continue
        got = tp2_results[name][str(index)]
        tokens = got["tokens"][0]
        assert tokens == hf_greedy(hf, prompt, params.max_tokens), f"request {index}"
        reference = hf_logprobs(hf, prompt + tokens)[len(prompt) - 1 : -1]
        want = [reference[t, token].item() for t, token in enumerate(tokens)]
        assert got["logprobs"] == pytest.approx(want, abs=1e-4)


def test_tp2_seeded_samples_equal_tp1(checkpoints: dict[str, Path], tp2_results: dict) -> None:
    requests = tp_requests()
    index = next(i for i, (_, _, p) in enumerate(requests) if p.seed is not None)
    engine = make_engine(checkpoints["llama"], max_batch_tokens=8)
    reports = run_staggered(engine, requests)[str(index)]
    assert tp2_results["llama"][str(index)]["tokens"] == [sample_tokens(reports, 0), sample_tokens(reports, 1)]

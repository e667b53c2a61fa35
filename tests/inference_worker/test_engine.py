"""The engine in-process at tp=1: greedy and logprob exactness against transformers, continuous
batching, chunked prefill, preemption, shared prefix blocks, seeded sampling, stop strings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _engine_helpers import (
    GREEDY,
    finish_reason,
    hf_greedy,
    hf_logprobs,
    make_engine,
    prompts,
    run_staggered,
    sample_text,
    sample_tokens,
)
from _tiny import hf_model

from inference_worker import SamplingParams, inspect_checkpoint

MODELS = ["opt", "llama", "mixtral"]
LENGTHS = [3, 17, 9, 30, 1]


@pytest.mark.parametrize("name", MODELS)
def test_greedy_equals_transformers_alone_batched_and_staggered(checkpoints: dict[str, Path], name: str) -> None:
    hf = hf_model(name)
    batch = prompts(1, LENGTHS)
    expected = [hf_greedy(hf, p, GREEDY.max_tokens) for p in batch]

    # Alone: one request in the engine at a time.
    engine = make_engine(checkpoints[name])
    for i, prompt in enumerate(batch):
        assert sample_tokens(run_staggered(engine, [(0, prompt, GREEDY)])["0"]) == expected[i], f"alone #{i}"

    # All at once, and joining at different decode steps with prefill chunked to 8 tokens a step
    # (the 17- and 30-token prompts are prefilled across several steps, mixed with decodes).
    for starts, budget in (([0] * 5, 64), ([0, 2, 3, 7, 11], 8)):
        engine = make_engine(checkpoints[name], max_batch_tokens=budget)
        out = run_staggered(engine, [(s, p, GREEDY) for s, p in zip(starts, batch, strict=True)])
        for i in range(len(batch)):
            assert sample_tokens(out[str(i)]) == expected[i], f"starts {starts}, request {i}"
        assert engine.pool.num_used == 0, "finished sequences must give their blocks back"


@pytest.mark.parametrize("name", ["opt", "llama"])
def test_logprobs_equal_transformers_log_softmax(checkpoints: dict[str, Path], name: str) -> None:
    hf = hf_model(name)
    engine = make_engine(checkpoints[name], max_batch_tokens=8)
    batch = prompts(2, [5, 20, 11])
    params = SamplingParams(max_tokens=8, temperature=0.0, logprobs=3)
    out = run_staggered(engine, [(0, p, params) for p in batch])
    for i, prompt in enumerate(batch):
        entries = [e for r in out[str(i)] for s in r.samples for e in s.logprobs]
        tokens = sample_tokens(out[str(i)])
        assert [e.token_id for e in entries] == tokens
        reference = hf_logprobs(hf, prompt + tokens)[len(prompt) - 1 : -1]  # rows that predicted each token
        for step, entry in enumerate(entries):
            assert entry.logprob == pytest.approx(reference[step, entry.token_id].item(), abs=1e-4)
            values, ids = reference[step].topk(3)
            assert [t for t, _ in entry.top] == ids.tolist()
            assert [v for _, v in entry.top] == pytest.approx(values.tolist(), abs=1e-4)


@pytest.mark.parametrize("name", ["opt", "llama"])
def test_echo_with_no_new_tokens_scores_the_prompt(checkpoints: dict[str, Path], name: str) -> None:
    hf = hf_model(name)
    engine = make_engine(checkpoints[name], max_batch_tokens=8)  # a 30-token prompt: four chunks
    prompt = prompts(3, [30])[0]
    params = SamplingParams(max_tokens=0, temperature=0.0, logprobs=2, prompt_logprobs=True)
    reports = run_staggered(engine, [(0, prompt, params)])["0"]
    scored = [r.prompt_logprobs for r in reports if r.prompt_logprobs is not None]
    assert len(scored) == 1, "the prompt's logprobs are reported exactly once"
    entries = scored[0]
    assert entries[0] is None and len(entries) == len(prompt)
    reference = hf_logprobs(hf, prompt)
    for position in range(1, len(prompt)):
        entry = entries[position]
        assert entry is not None and entry.token_id == prompt[position]
        assert entry.logprob == pytest.approx(reference[position - 1, prompt[position]].item(), abs=1e-4)
    assert sample_tokens(reports) == [] and finish_reason(reports) == "length"


def test_a_pool_too_small_for_everyone_preempts_and_still_finishes_all(checkpoints: dict[str, Path]) -> None:
    hf = hf_model("llama")
    batch = prompts(4, [9, 10, 7, 12])
    params = SamplingParams(max_tokens=16, temperature=0.0)
    expected = [hf_greedy(hf, p, 16) for p in batch]
    # 12 blocks of 4 tokens: each request needs 5-7 blocks, all four together need ~24.
    engine = make_engine(checkpoints["llama"], num_blocks=12, block_size=4)
    out = run_staggered(engine, [(0, p, params) for p in batch])
    assert engine.scheduler.preemptions > 0, "the test must actually preempt"
    for i in range(len(batch)):
        assert sample_tokens(out[str(i)]) == expected[i], f"request {i}"
    assert engine.pool.num_used == 0


def test_samples_share_the_prompt_blocks_and_copy_the_last_on_write(checkpoints: dict[str, Path]) -> None:
    hf = hf_model("opt")
    engine = make_engine(checkpoints["opt"], block_size=4)
    prompt = prompts(5, [10])[0]  # blocks: [0-3] [4-7] [8-9 partial]
    params = SamplingParams(max_tokens=6, temperature=1.0, n=3, seed=7, logprobs=1, ignore_eos=True)
    engine.add("r", prompt, params)
    reports = list(engine.step())  # prefill, fork into three samples, each picks a first token
    assert len(engine.groups["r"].seqs) == 3
    assert engine.pool.num_used == 3, "three samples, one copy of the prompt's three blocks"
    reports += engine.step()  # each writes position 10 into the shared partial block
    assert engine.pool.num_used == 3 + 2, "two samples copied the partial block, the last wrote in place"
    while engine.has_work:
        reports += engine.step()
    assert engine.pool.num_used == 0
    samples = [sample_tokens(reports, i) for i in range(3)]
    assert all(len(s) == 6 for s in samples) and len({tuple(s) for s in samples}) > 1
    for i, tokens in enumerate(samples):  # every sample's own cache was right: its logprobs match
        got = [e.logprob for r in reports for s in r.samples if s.index == i for e in s.logprobs]
        reference = hf_logprobs(hf, prompt + tokens)[len(prompt) - 1 : -1]
        want = [reference[t, token].item() for t, token in enumerate(tokens)]
        assert got == pytest.approx(want, abs=1e-4)


def test_a_seed_gives_the_same_tokens_whatever_shares_the_batch(checkpoints: dict[str, Path]) -> None:
    seeded = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.95, top_k=40, seed=1234, ignore_eos=True)
    prompt = prompts(6, [8])[0]
    others = prompts(7, [5, 14, 3])

    def run(requests: list[tuple[int, list[int], SamplingParams]], budget: int = 64) -> list[int]:
        engine = make_engine(checkpoints["llama"], max_batch_tokens=budget)
        return sample_tokens(run_staggered(engine, requests)["0"])

    alone = run([(0, prompt, seeded)])
    noisy = SamplingParams(max_tokens=12, temperature=1.0, n=2)
    crowded = run([(2, prompt, seeded)] + [(s, p, noisy) for s, p in zip([0, 1, 3], others, strict=True)], budget=6)
    assert crowded == alone
    assert run([(0, prompt, SamplingParams(**{**seeded.__dict__, "seed": 4321}))]) != alone
    pair = make_engine(checkpoints["llama"])
    out = run_staggered(pair, [(0, prompt, SamplingParams(**{**seeded.__dict__, "n": 2}))])["0"]
    assert sample_tokens(out, 0) == alone, "sample 0 of n=2 draws from the same stream as n=1"
    assert sample_tokens(out, 1) != alone


def test_stop_string_across_two_tokens_is_cut_and_never_streamed(checkpoints: dict[str, Path]) -> None:
    prompt = prompts(8, [6])[0]
    free = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    engine = make_engine(checkpoints["opt"])
    deltas = [s.text for r in run_staggered(engine, [(0, prompt, free)])["0"] for s in r.samples]
    text = "".join(deltas)
    # A stop string made of the end of one token's text and the start of the next one's.
    stop = None
    for k in range(len(deltas) - 1):
        candidate = deltas[k][-2:] + deltas[k + 1][:2]
        if (
            len(deltas[k]) >= 2
            and len(deltas[k + 1]) >= 1
            and text.find(candidate) == len("".join(deltas[: k + 1])) - 2
        ):
            stop = candidate
            break
    assert stop is not None, f"no two-token stop string in {deltas}"
    engine = make_engine(checkpoints["opt"])
    reports = run_staggered(engine, [(0, prompt, SamplingParams(**{**free.__dict__, "stop": ("zzzz", stop)}))])["0"]
    streamed = [s.text for r in reports for s in r.samples]
    # Token k's text ends with the stop string's first two characters: had they been released
    # before token k+1 completed the stop, the joined stream would contain them.
    assert "".join(streamed) == text[: text.find(stop)]
    assert finish_reason(reports) == "stop"


def test_eos_ends_with_stop_and_max_tokens_with_length(checkpoints: dict[str, Path]) -> None:
    hf = hf_model("llama")
    engine = make_engine(checkpoints["llama"])
    batch = prompts(9, [4] * 4)  # greedy reaches EOS from prompts 1 and 2
    out = run_staggered(engine, [(0, p, SamplingParams(max_tokens=20, temperature=0.0)) for p in batch])
    reasons = set()
    for i, prompt in enumerate(batch):
        tokens = sample_tokens(out[str(i)])
        assert tokens == hf_greedy(hf, prompt, 20)
        reason = finish_reason(out[str(i)])
        reasons.add(reason)
        assert reason == ("stop" if tokens[-1] == 2 else "length")
        # The text reads as it does after the prompt (with its leading space, for instance).
        decode = engine.tokenizer.decode
        assert decode(prompt) + sample_text(out[str(i)]) == decode(prompt + tokens)
    assert reasons == {"stop", "length"}, "the prompts should cover both ways of ending"


@pytest.mark.parametrize("name", ["opt", "mixtral"])
def test_a_native_checkpoint_serves_the_same_greedy_tokens(
    checkpoints: dict[str, Path], tmp_path: Path, name: str
) -> None:
    """Our native layout (what reshard and training's export write), with the tokenizer beside it."""
    from reshard import convert

    native = tmp_path / "native"
    convert(checkpoints[name], native, to="native", tp=1)
    shutil.copy(checkpoints[name] / "tokenizer.json", native / "tokenizer.json")
    info = inspect_checkpoint(native, tp_size=1)
    assert info.format == "native"
    hf = hf_model(name)
    batch = prompts(2, LENGTHS)
    engine = make_engine(native)
    out = run_staggered(engine, [(0, p, GREEDY) for p in batch])
    for i, prompt in enumerate(batch):
        assert sample_tokens(out[str(i)]) == hf_greedy(hf, prompt, GREEDY.max_tokens), f"request {i}"

"""Running the engine in-process and the transformers reference it is compared with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from _tiny import EOS, VOCAB, hf_model

from inference_worker import Engine, EngineConfig, RequestOutput, SamplingParams, inspect_checkpoint, load_model

GREEDY = SamplingParams(max_tokens=12, temperature=0.0)


def make_engine(path: Path, *, tp_size: int = 1, channel: Any = None, **config: Any) -> Engine:
    """An engine over ``path`` (the whole torch.distributed world when one is initialised)."""
    info = inspect_checkpoint(path, tp_size=tp_size)
    defaults: dict[str, Any] = {"block_size": 4, "num_blocks": 256, "max_batch_tokens": 64}
    defaults.update(config)
    return Engine(load_model(info), info.tokenizer, EngineConfig(**defaults), channel=channel)


def prompts(seed: int, lengths: list[int]) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, VOCAB, (length,), generator=gen).tolist() for length in lengths]


def run_staggered(
    engine: Engine, requests: list[tuple[int, list[int], SamplingParams]]
) -> dict[str, list[RequestOutput]]:
    """Add request i (id str(i)) when ``step`` reaches its start step; run until all are done."""
    pending = sorted(enumerate(requests), key=lambda item: item[1][0])
    out: dict[str, list[RequestOutput]] = {}
    step = 0
    while pending or engine.has_work:
        while pending and pending[0][1][0] <= step:
            index, (_, prompt, params) = pending.pop(0)
            engine.add(str(index), prompt, params)
        for report in engine.step():
            out.setdefault(report.request_id, []).append(report)
        step += 1
    return out


def sample_tokens(reports: list[RequestOutput], index: int = 0) -> list[int]:
    return [t for r in reports for s in r.samples if s.index == index for t in s.token_ids]


def sample_text(reports: list[RequestOutput], index: int = 0) -> str:
    return "".join(s.text for r in reports for s in r.samples if s.index == index)


def finish_reason(reports: list[RequestOutput], index: int = 0) -> str | None:
    reasons = [s.finish_reason for r in reports for s in r.samples if s.index == index and s.finish_reason]
    assert len(reasons) <= 1, "a sample reported its end twice"
    return reasons[0] if reasons else None


def hf_greedy(model: Any, prompt: list[int], max_new_tokens: int) -> list[int]:
    """transformers' greedy continuation, cut after the first EOS (as the engine stops there)."""
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=1, eos_token_id=EOS
        )[0, len(prompt) :].tolist()
    return out[: out.index(EOS) + 1] if EOS in out else out


def hf_logprobs(model: Any, ids: list[int]) -> torch.Tensor:
    """log_softmax of transformers' logits at every position of ``ids`` (T, V)."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


__all__ = ["GREEDY", "hf_model"]


# --------------------------------------------------------------------------------------------
# Tensor-parallel runs (spawned gloo workers)
# --------------------------------------------------------------------------------------------

TP_PARAMS = SamplingParams(max_tokens=10, temperature=0.0, logprobs=2)
TP_SEEDED = SamplingParams(max_tokens=8, temperature=0.8, top_p=0.9, n=2, seed=99, ignore_eos=True)


def tp_requests() -> list[tuple[int, list[int], SamplingParams]]:
    batch = prompts(11, [3, 17, 9, 30])
    greedy = [(start, p, TP_PARAMS) for start, p in zip([0, 0, 2, 5], batch, strict=True)]
    return greedy + [(1, prompts(12, [10])[0], TP_SEEDED)]


def tp_engine_worker(paths: dict[str, str]) -> dict[str, dict[str, Any]]:
    """On every rank of a gloo world: rank 0 runs the engine, the others follow its plans."""
    import torch.distributed as dist

    from inference_worker.engine import PlanChannel, make_runner, worker_loop

    channel = PlanChannel(dist.new_group(backend="gloo"))
    config = {"block_size": 4, "num_blocks": 256, "max_batch_tokens": 8}
    results: dict[str, dict[str, Any]] = {}
    for name, path in paths.items():
        if dist.get_rank() != 0:
            info = inspect_checkpoint(path, tp_size=dist.get_world_size())
            worker_loop(make_runner(load_model(info), EngineConfig(**config)), channel)
            continue
        engine = make_engine(Path(path), tp_size=dist.get_world_size(), channel=channel, **config)
        out = run_staggered(engine, tp_requests())
        engine.shutdown()
        results[f"{name}:tp"] = {"size": engine.model.tp.world_size}
        results[name] = {
            rid: {
                "tokens": [sample_tokens(reports, i) for i in range(2)],
                "logprobs": [e.logprob for r in reports for s in r.samples for e in s.logprobs],
            }
            for rid, reports in out.items()
        }
    return results

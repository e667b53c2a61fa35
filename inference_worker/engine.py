"""The engine: schedule a step, run it on every rank, sample, detokenize, report.

Rank 0 owns the scheduler and the requests. Each step it broadcasts the step's plan (token ids,
positions, block tables, block copies) to the other ranks over a CPU (gloo) group; every rank then
runs the same forward through ``ModelRunner`` on its shard of the model and of the KV pool. Only
rank 0 samples.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from inference_worker.kv_cache import BlockPool, PagedKVCache, block_bytes
from inference_worker.metrics import Metrics
from inference_worker.sampling import (
    SamplingParams,
    TokenLogprobs,
    choose_token,
    logprobs_of,
    make_generator,
    prompt_logprobs,
)
from inference_worker.scheduler import Scheduled, Scheduler, Sequence, SequenceGroup, Status, StepPlan
from inference_worker.tokenizer import Tokenizer
from training.model import Transformer


@dataclass(frozen=True)
class EngineConfig:
    block_size: int = 16
    kv_memory: int = 1 << 30  # bytes of KV cache per rank
    num_blocks: int | None = None  # overrides kv_memory (tests use a tiny pool)
    max_batch_tokens: int = 2048  # tokens per forward, prefill chunks and decodes together
    max_running: int = 256  # sequences in the running batch

    def pool_blocks(self, model: Transformer) -> int:
        if self.num_blocks is not None:
            return self.num_blocks
        dtype = model.embed.weight.dtype
        per_block = block_bytes(model.config, block_size=self.block_size, tp_size=model.tp.world_size, dtype=dtype)
        blocks = self.kv_memory // per_block
        if blocks < 1:
            raise ValueError(
                f"--kv-memory {self.kv_memory} bytes holds no KV block (one block of {self.block_size} tokens "
                f"takes {per_block} bytes per rank): raise --kv-memory"
            )
        return int(blocks)


class PlanChannel:
    """Rank 0 -> all ranks: the step plan, pickled over a gloo group (CPU, whatever the model's
    backend), so ranks wait for work without spinning a GPU."""

    def __init__(self, group: Any) -> None:
        self.group = group

    def send(self, plan: StepPlan) -> None:
        dist.broadcast_object_list([plan], src=0, group=self.group)

    def recv(self) -> StepPlan:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]


class ModelRunner:
    """One rank's model and KV pool; runs a plan's forward."""

    def __init__(self, model: Transformer, cache: PagedKVCache) -> None:
        self.model, self.cache = model, cache
        self.device = model.embed.weight.device

    def execute(self, plan: StepPlan) -> torch.Tensor:
        """Logits (R, vocab) in float32 for the plan's ``logits_at`` rows."""
        if plan.copies:
            self.cache.copy_blocks(plan.copies)
        self.cache.begin_step(plan.chunks)
        ids = torch.tensor(plan.token_ids, dtype=torch.long, device=self.device)[None]  # (1, N)
        positions = torch.tensor(plan.positions, dtype=torch.long, device=self.device)[None]  # (1, N)
        rows = torch.tensor(plan.logits_at, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            logits = self.model(ids, positions=positions, kv_cache=self.cache, logits_at=rows)
        assert isinstance(logits, torch.Tensor)
        return logits[0].float().cpu()  # (R, V)


def make_runner(model: Transformer, config: EngineConfig) -> ModelRunner:
    """This rank's runner with a KV pool of ``config``'s size (the same block count on every rank)."""
    cache = PagedKVCache(
        model.config,
        num_blocks=config.pool_blocks(model),
        block_size=config.block_size,
        tp_size=model.tp.world_size,
        dtype=model.embed.weight.dtype,
        device=model.embed.weight.device,
    )
    return ModelRunner(model, cache)


def worker_loop(runner: ModelRunner, channel: PlanChannel) -> None:
    """Ranks other than 0: run every plan rank 0 sends until it says shut down."""
    while True:
        plan = channel.recv()
        if plan.shutdown:
            return
        if not plan.empty:
            runner.execute(plan)


@dataclass
class SampleOutput:
    """What is new for one sample since the last report."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprobs]
    finish_reason: str | None


@dataclass
class RequestOutput:
    request_id: str
    samples: list[SampleOutput]
    prompt_logprobs: list[TokenLogprobs | None] | None  # sent once, with the first report
    finished: bool
    prompt_tokens: int
    completion_tokens: int  # so far, all samples


@dataclass
class _Pending:
    group: SequenceGroup
    outputs: list[SampleOutput] = field(default_factory=list)


class Engine:
    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        config: EngineConfig | None = None,
        *,
        eos_token_id: int | None = None,
        channel: PlanChannel | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config or EngineConfig()
        self.model, self.tokenizer, self.channel, self.metrics = model, tokenizer, channel, metrics
        self.eos_token_id = eos_token_id if eos_token_id is not None else model.config.eos_token_id
        self.max_context = model.config.max_seq_len
        self.runner = make_runner(model, self.config)
        self.pool = BlockPool(self.runner.cache.num_blocks)
        self.scheduler = Scheduler(
            self.pool,
            block_size=self.config.block_size,
            max_batch_tokens=self.config.max_batch_tokens,
            max_running=self.config.max_running,
        )
        self.groups: dict[str, SequenceGroup] = {}
        self._arrivals = 0
        self._ready: list[RequestOutput] = []  # reports that need no forward (max_tokens=0)
        self.on_started: Callable[[SequenceGroup], None] | None = None

    # ---- capacity --------------------------------------------------------------------------
    @property
    def capacity_tokens(self) -> int:
        return self.pool.num_blocks * self.config.block_size

    def check_fits(self, prompt_tokens: int, max_tokens: int) -> None:
        """A request the pool could never hold alone would be preempted forever: refuse it."""
        need = prompt_tokens + max_tokens
        if need > self.capacity_tokens:
            raise ValueError(
                f"prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) needs {need} tokens of KV "
                f"cache, but the engine's pool holds {self.capacity_tokens}; lower max_tokens or start the "
                f"engine with a larger --kv-memory"
            )

    # ---- requests --------------------------------------------------------------------------
    def add(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> SequenceGroup:
        if request_id in self.groups:
            raise ValueError(f"request id {request_id!r} is already running")
        if not prompt_ids:
            raise ValueError("prompt has no tokens")
        self.check_fits(len(prompt_ids), params.max_tokens)
        self._arrivals += 1
        group = SequenceGroup(request_id, self._arrivals, list(prompt_ids), params)
        if params.prompt_logprobs:
            group.prompt_logprobs = [None] * len(prompt_ids)
        self.groups[request_id] = group
        first = self._new_seq(group, 0)
        if params.max_tokens == 0 and not params.prompt_logprobs:
            for index in range(params.n):  # nothing to compute: echo only
                seq = first if index == 0 else self._new_seq(group, index)
                seq.status, seq.finish_reason = Status.FINISHED, "length"
            group.started = True
            self._ready.append(self._report(group))
            return group
        self.scheduler.add(first)
        return group

    def _new_seq(self, group: SequenceGroup, index: int) -> Sequence:
        seq = Sequence(
            group,
            index,
            list(group.prompt_ids),
            make_generator(group.params.seed, index),
            self.tokenizer.detokenizer(group.prompt_ids),
        )
        group.seqs.append(seq)
        return seq

    def abort(self, request_id: str) -> None:
        """Drop a request (its client went away); its blocks return to the pool at once."""
        group = self.groups.pop(request_id, None)
        if group is None:
            return
        for seq in group.seqs:
            if seq.status is not Status.FINISHED:
                self.scheduler.finish(seq, "abort")
        if self.metrics is not None:
            self.metrics.requests_aborted.inc()
        self._update_gauges()

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work or bool(self._ready)

    # ---- one step --------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        reports, self._ready = self._ready, []
        plan, chosen = self.scheduler.schedule()
        for group in self.scheduler.newly_started:
            if self.metrics is not None:
                self.metrics.prompt_tokens.inc(group.num_prompt)
            if self.on_started is not None:
                self.on_started(group)
        if plan.empty:
            self._update_gauges()
            return reports
        if self.channel is not None:
            self.channel.send(plan)
        logits = self.runner.execute(plan)
        now = time.monotonic()
        touched: dict[str, SequenceGroup] = {}
        row = 0
        for item in chosen:
            rows = logits[row : row + item.logit_rows]
            row += item.logit_rows
            self._advance(item, rows, now)
            touched[item.seq.group.request_id] = item.seq.group
        for group in touched.values():
            report = self._report(group)
            if report.samples or report.prompt_logprobs is not None or report.finished:
                reports.append(report)
        self._update_gauges()
        return reports

    def heartbeat(self) -> None:
        """Keep the other ranks' broadcast from timing out while idle."""
        if self.channel is not None:
            self.channel.send(StepPlan())

    def shutdown(self) -> None:
        if self.channel is not None:
            self.channel.send(StepPlan(shutdown=True))

    def _advance(self, item: Scheduled, rows: torch.Tensor, now: float) -> None:
        seq, group = item.seq, item.seq.group
        seq.num_computed += item.num_new
        if item.prompt_rows and group.prompt_logprobs is not None:
            # Row t holds the distribution of the token after position context + t.
            count = min(item.num_new, group.num_prompt - 1 - item.context)
            if count > 0:
                following = group.prompt_ids[item.context + 1 : item.context + 1 + count]
                for offset, entry in enumerate(prompt_logprobs(rows[:count], following, group.params.logprobs or 0)):
                    group.prompt_logprobs[item.context + 1 + offset] = entry
        if seq.num_computed < len(seq.token_ids):
            return  # mid-prompt chunk
        last = rows[-1]
        params = group.params
        targets = [seq]
        if len(group.seqs) < params.n:  # the prompt is done: fork the other samples off it
            for index in range(1, params.n):
                child = self._new_seq(group, index)
                self.scheduler.fork(seq, child)
                targets.append(child)
        if params.max_tokens == 0:
            for target in targets:
                self.scheduler.finish(target, "length")
            return
        for target in targets:
            token = choose_token(last, params, target.generator, target.output_ids)
            self._append(target, token, last, now)

    def _append(self, seq: Sequence, token: int, row: torch.Tensor, now: float) -> None:
        group, params = seq.group, seq.group.params
        seq.token_ids.append(token)
        if params.logprobs is not None:
            seq.logprobs.append(logprobs_of(row, token, params.logprobs))
        if self.metrics is not None:
            self.metrics.generation_tokens.inc()
            if group.first_token_time is None:
                self.metrics.time_to_first_token.observe(now - group.arrival_time)
            elif seq.last_token_time:
                self.metrics.inter_token_latency.observe(now - seq.last_token_time)
        if group.first_token_time is None:
            group.first_token_time = now
        seq.last_token_time = now
        reason: str | None = None
        if token == self.eos_token_id and not params.ignore_eos:
            reason = "stop"
        else:
            before = len(seq.text)
            seq.text += seq.detokenizer.push(token)
            if params.stop and _cut_at_stop(seq, params.stop, before):
                reason = "stop"
        if reason is None and (len(seq.output_ids) >= params.max_tokens or len(seq.token_ids) >= self.max_context):
            reason = "length"
        if reason is not None:
            self.scheduler.finish(seq, reason)

    def _report(self, group: SequenceGroup) -> RequestOutput:
        samples: list[SampleOutput] = []
        stops = group.params.stop
        for seq in group.seqs:
            finished = seq.status is Status.FINISHED
            upto = len(seq.text) if finished else len(seq.text) - _stop_prefix_len(seq.text, stops)
            text = seq.text[seq.released : max(upto, seq.released)]
            new_ids = seq.output_ids[seq.reported_tokens :]
            logprobs = seq.logprobs[seq.reported_tokens :]
            reason = seq.finish_reason if finished and seq.finish_reason != "abort" else None
            report_finish = reason is not None and not seq.finish_sent
            if text or new_ids or report_finish:
                samples.append(SampleOutput(seq.index, text, new_ids, logprobs, reason if report_finish else None))
                seq.released = max(upto, seq.released)
                seq.reported_tokens = len(seq.output_ids)
                seq.finish_sent = seq.finish_sent or report_finish
        prompt_lp = None
        if group.params.prompt_logprobs and not group.prompt_logprobs_sent and not group.wants_prompt_logprobs():
            prompt_lp, group.prompt_logprobs_sent = group.prompt_logprobs, True
        finished = group.finished
        if finished:
            self.groups.pop(group.request_id, None)
            if self.metrics is not None:
                self.metrics.e2e_latency.observe(time.monotonic() - group.arrival_time)
                for seq in group.seqs:
                    self.metrics.finished_reason(seq.finish_reason or "unknown").inc()
        completion = sum(len(s.output_ids) for s in group.seqs)
        return RequestOutput(group.request_id, samples, prompt_lp, finished, group.num_prompt, completion)

    def _update_gauges(self) -> None:
        if self.metrics is None:
            return
        sched = self.scheduler
        self.metrics.running.set(len({s.group.request_id for s in sched.running}))
        self.metrics.waiting.set(len({s.group.request_id for s in sched.waiting}))
        self.metrics.kv_blocks_used.set(self.pool.num_used)
        self.metrics.preemptions.inc(sched.preemptions - self.metrics.preemptions_seen)
        self.metrics.preemptions_seen = sched.preemptions

    # ---- offline use -------------------------------------------------------------------------
    def run_until_done(self) -> dict[str, list[RequestOutput]]:
        """Step until no work is left; every report, by request id (tests and benchmarks)."""
        out: dict[str, list[RequestOutput]] = {}
        while self.has_work:
            for report in self.step():
                out.setdefault(report.request_id, []).append(report)
        return out


def _cut_at_stop(seq: Sequence, stops: tuple[str, ...], before: int) -> bool:
    """Cut ``seq.text`` before the first stop string that the newest text completed."""
    longest = max(len(s) for s in stops)
    start = max(0, before - longest + 1)
    found = [i for i in (seq.text.find(s, start) for s in stops) if i >= 0]
    if not found:
        return False
    seq.text = seq.text[: min(found)]
    return True


def _stop_prefix_len(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that could still grow into a stop string: held back
    while streaming so a stop string is never partly sent."""
    hold = 0
    for stop in stops:
        for length in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:length]):
                hold = length
                break
    return hold

"""Iteration-level scheduling: which sequences run in the next forward, and with how many tokens.

Each step packs (1) one token for every running sequence that is decoding, (2) the next chunk of
prompts being prefilled, (3) chunks of waiting sequences, oldest first, up to ``max_batch_tokens``
tokens in all. A decode that needs a block when the pool is empty preempts the newest running
sequence: its blocks go back to the pool and it rejoins the waiting queue to be recomputed
(prompt + what it had generated) later. The oldest sequence is never preempted for a newer one,
so every accepted request finishes.
"""

from __future__ import annotations

import bisect
import enum
import time
from dataclasses import dataclass, field

import torch

from inference_worker.kv_cache import BlockPool, SeqChunk
from inference_worker.sampling import SamplingParams, TokenLogprobs
from inference_worker.tokenizer import IncrementalDetokenizer


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    """One sample of a request: its tokens (prompt + generated), blocks and decoded text."""

    group: SequenceGroup
    index: int  # sample number within the request (0 .. n-1)
    token_ids: list[int]
    generator: torch.Generator
    detokenizer: IncrementalDetokenizer
    block_table: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose keys/values are in the cache
    status: Status = Status.WAITING
    finish_reason: str | None = None
    text: str = ""  # generated text, cut before a stop string
    released: int = 0  # characters of ``text`` already handed out
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    reported_tokens: int = 0  # generated tokens already handed out
    last_token_time: float = 0.0
    finish_sent: bool = False

    @property
    def key(self) -> tuple[int, int]:
        """Age order: earlier requests first, then sample number."""
        return (self.group.arrival, self.index)

    @property
    def pending(self) -> int:
        return len(self.token_ids) - self.num_computed

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.group.num_prompt :]


@dataclass(eq=False)
class SequenceGroup:
    """One prompt of one request, with its ``n`` samples. Until the prompt is prefilled there is
    one sequence; then it forks into ``n`` that share the prompt's blocks."""

    request_id: str
    arrival: int
    prompt_ids: list[int]
    params: SamplingParams
    seqs: list[Sequence] = field(default_factory=list)
    started: bool = False  # admitted at least once (no longer counts against the waiting bound)
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    prompt_logprobs_sent: bool = False
    arrival_time: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None

    @property
    def num_prompt(self) -> int:
        return len(self.prompt_ids)

    @property
    def finished(self) -> bool:
        return all(s.status is Status.FINISHED for s in self.seqs) and len(self.seqs) == max(self.params.n, 1)

    def wants_prompt_logprobs(self) -> bool:
        return self.params.prompt_logprobs and self.prompt_logprobs is not None and None in self.prompt_logprobs[1:]


@dataclass
class Scheduled:
    seq: Sequence
    num_new: int
    context: int
    logit_rows: int  # rows of logits this sequence gets back: its last token's, or all (prompt logprobs)
    prompt_rows: bool  # the rows cover every new token, for the prompt's logprobs


@dataclass
class StepPlan:
    """What every rank runs in one forward; plain lists so it pickles small for the broadcast."""

    token_ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    chunks: list[SeqChunk] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)
    logits_at: list[int] = field(default_factory=list)
    shutdown: bool = False

    @property
    def empty(self) -> bool:
        return not self.token_ids


class Scheduler:
    def __init__(
        self,
        pool: BlockPool,
        *,
        block_size: int,
        max_batch_tokens: int,
        max_running: int,
    ) -> None:
        self.pool, self.block_size = pool, block_size
        self.max_batch_tokens, self.max_running = max_batch_tokens, max_running
        self.waiting: list[Sequence] = []  # sorted by key
        self.running: list[Sequence] = []  # sorted by key
        self.preemptions = 0
        self.preempted_this_step = False
        self.newly_started: list[SequenceGroup] = []

    # ---- queues ------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        bisect.insort(self.waiting, seq, key=lambda s: s.key)

    def add_running(self, seq: Sequence) -> None:
        seq.status = Status.RUNNING
        bisect.insort(self.running, seq, key=lambda s: s.key)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Retire a sequence (finished, or aborted with reason "abort") and free its blocks."""
        self._release(seq)
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        seq.status, seq.finish_reason = Status.FINISHED, reason

    def _release(self, seq: Sequence) -> None:
        for block in seq.block_table:
            self.pool.release(block)
        seq.block_table = []

    def preempt(self, seq: Sequence) -> None:
        self._release(seq)
        self.running.remove(seq)
        seq.num_computed = 0
        self.preemptions += 1
        self.preempted_this_step = True
        self.add(seq)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- one step ----------------------------------------------------------------------------
    def schedule(self) -> tuple[StepPlan, list[Scheduled]]:
        budget = self.max_batch_tokens
        chosen: list[Scheduled] = []
        plan = StepPlan()
        self.preempted_this_step = False
        self.newly_started = []

        # 1. decodes, oldest first; a missing block preempts the newest running sequence.
        for seq in list(self.running):
            if budget == 0:
                break
            if seq.status is not Status.RUNNING or seq.pending != 1:
                continue
            if self._reserve(seq, 1, plan, may_preempt=True):
                chosen.append(self._take(seq, 1))
                budget -= 1

        # 2. prompts already being prefilled, then 3. waiting sequences, as the pool allows.
        for seq in [s for s in self.running if s.pending > 1] + list(self.waiting):
            if budget == 0:
                break
            admitting = seq.status is Status.WAITING
            if admitting and (len(self.running) >= self.max_running or self.preempted_this_step):
                break  # after a preemption the pool is short: admitting now would only thrash
            room = self._room(seq)
            if admitting:
                # Keep a block per running sequence in reserve, so decodes do not immediately
                # preempt what was just admitted.
                room -= min(len(self.running), self.pool.num_free) * self.block_size
            count = min(seq.pending, budget, room)
            if count <= 0:
                if admitting:
                    break  # first come, first served: no overtaking in the queue
                continue
            if admitting:
                self.waiting.remove(seq)
                self.add_running(seq)
                if not seq.group.started:
                    seq.group.started = True
                    self.newly_started.append(seq.group)
            self._reserve(seq, count, plan, may_preempt=False)
            chosen.append(self._take(seq, count))
            budget -= count

        row = 0
        for item in chosen:
            seq = item.seq
            plan.token_ids.extend(seq.token_ids[item.context : item.context + item.num_new])
            plan.positions.extend(range(item.context, item.context + item.num_new))
            plan.chunks.append(SeqChunk(item.num_new, item.context, list(seq.block_table)))
            first = row + item.num_new - item.logit_rows
            plan.logits_at.extend(range(first, row + item.num_new))
            row += item.num_new
        return plan, chosen

    def _take(self, seq: Sequence, count: int) -> Scheduled:
        context = seq.num_computed
        group = seq.group
        all_rows = group.wants_prompt_logprobs() and context < group.num_prompt
        completes = context + count == len(seq.token_ids)
        rows = count if all_rows else (1 if completes else 0)
        return Scheduled(seq, count, context, rows, all_rows)

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _room(self, seq: Sequence) -> int:
        """How many more tokens this sequence can cache with its blocks and the free ones."""
        return len(seq.block_table) * self.block_size - seq.num_computed + self.pool.num_free * self.block_size

    def _reserve(self, seq: Sequence, count: int, plan: StepPlan, *, may_preempt: bool) -> bool:
        """Blocks for positions [num_computed, num_computed + count), copying a shared partial
        block first. With ``may_preempt`` frees blocks by preempting the newest sequences; False
        when that had to be ``seq`` itself."""
        start = seq.num_computed
        new_blocks = self._blocks_for(start + count) - len(seq.block_table)
        shared = start % self.block_size != 0 and self.pool.refs(seq.block_table[start // self.block_size]) > 1
        needed = new_blocks + int(shared)
        while self.pool.num_free < needed:
            if not may_preempt:
                raise RuntimeError("internal: reserve without room")
            victim = self.running[-1]
            self.preempt(victim)
            if victim is seq:
                return False
            # The victim may have shared the block we were about to copy.
            shared = start % self.block_size != 0 and self.pool.refs(seq.block_table[start // self.block_size]) > 1
            needed = new_blocks + int(shared)
        if shared:
            index = start // self.block_size
            old, new = seq.block_table[index], self.pool.allocate()
            plan.copies.append((old, new))
            self.pool.release(old)
            seq.block_table[index] = new
        for _ in range(new_blocks):
            seq.block_table.append(self.pool.allocate())
        return True

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """``child`` shares every block of ``parent`` (the prompt's); it copies the last partial
        block the first time it writes there."""
        for block in parent.block_table:
            self.pool.share(block)
        child.block_table = list(parent.block_table)
        child.num_computed = parent.num_computed
        self.add_running(child)

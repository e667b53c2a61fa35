"""The engine on its own thread, fed by the HTTP server's event loop.

The server thread submits requests (refused with ``QueueFull`` past the waiting bound, all or
nothing for a multi-prompt request) and aborts them; the engine thread steps whenever there is
work and hands each report to the submitting event loop's queue. A request counts against the
waiting bound until the scheduler first admits it; from then on it is never dropped.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from inference_worker.engine import Engine, RequestOutput
from inference_worker.sampling import SamplingParams
from inference_worker.scheduler import SequenceGroup

log = logging.getLogger(__name__)


class QueueFull(Exception):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineFailed(Exception):
    """Delivered to a request's queue when the engine thread hit an internal error."""


@dataclass(frozen=True)
class Submission:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[RequestOutput | EngineFailed]


class AsyncEngine:
    def __init__(
        self,
        engine: Engine,
        *,
        max_waiting: int,
        max_waiting_tokens: int,
        heartbeat_s: float = 2.0,
    ) -> None:
        self.engine = engine
        self.max_waiting, self.max_waiting_tokens = max_waiting, max_waiting_tokens
        self.heartbeat_s = heartbeat_s
        self._cond = threading.Condition()
        self._inbox: list[Submission] = []
        self._aborts: list[str] = []
        self._streams: dict[str, _Stream] = {}
        self._unstarted: dict[str, int] = {}  # request id -> prompt tokens, while waiting for admission
        self._stopping = False
        self.failed: str | None = None  # why the engine thread stopped, if it broke
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        engine.on_started = self._started

    # ---- server side -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    @property
    def waiting(self) -> tuple[int, int]:
        """(requests, prompt tokens) waiting for admission."""
        with self._cond:
            return len(self._unstarted), sum(self._unstarted.values())

    def submit(self, submissions: list[Submission]) -> asyncio.Queue[RequestOutput | EngineFailed]:
        """Queue all of ``submissions`` or none; their reports all go to the returned queue."""
        queue: asyncio.Queue[RequestOutput | EngineFailed] = asyncio.Queue()
        stream = _Stream(asyncio.get_running_loop(), queue)
        tokens = sum(len(s.prompt_ids) for s in submissions)
        with self._cond:
            if self._stopping:
                raise QueueFull("the engine is shutting down", retry_after=5)
            waiting = len(self._unstarted)
            waiting_tokens = sum(self._unstarted.values())
            # An empty queue always takes a request, so a large prompt is never refused forever.
            if waiting and (
                waiting + len(submissions) > self.max_waiting or waiting_tokens + tokens > self.max_waiting_tokens
            ):
                raise QueueFull(
                    f"the engine's waiting queue is full ({waiting} requests, {waiting_tokens} prompt tokens; "
                    f"bounds {self.max_waiting} requests, {self.max_waiting_tokens} tokens): retry later",
                    retry_after=self._retry_after(waiting),
                )
            for sub in submissions:
                self._streams[sub.request_id] = stream
                self._unstarted[sub.request_id] = len(sub.prompt_ids)
            self._inbox.extend(submissions)
            self._cond.notify()
        return queue

    def abort(self, request_ids: list[str]) -> None:
        with self._cond:
            for request_id in request_ids:
                if self._streams.pop(request_id, None) is not None:
                    self._unstarted.pop(request_id, None)
                    self._aborts.append(request_id)
            self._cond.notify()

    def _retry_after(self, waiting: int) -> int:
        # A rough wait: each queued request takes about one admission round; at least a second.
        return max(1, min(30, waiting // 8))

    # ---- engine thread -----------------------------------------------------------------------
    def _started(self, group: SequenceGroup) -> None:
        with self._cond:
            self._unstarted.pop(group.request_id, None)

    def _run(self) -> None:
        engine = self.engine
        last_sent = time.monotonic()
        try:
            while True:
                with self._cond:
                    while not (self._inbox or self._aborts or self._stopping or engine.has_work):
                        if not self._cond.wait(timeout=self.heartbeat_s):
                            break
                    inbox, self._inbox = self._inbox, []
                    aborts, self._aborts = self._aborts, []
                    stopping = self._stopping
                if stopping:
                    break
                for request_id in aborts:
                    engine.abort(request_id)
                for sub in inbox:
                    self._add(sub)
                if engine.has_work:
                    self._dispatch(engine.step())
                    last_sent = time.monotonic()
                elif time.monotonic() - last_sent >= self.heartbeat_s:
                    engine.heartbeat()
                    last_sent = time.monotonic()
        except Exception as exc:  # a bug: tell every client instead of leaving them hanging
            log.exception("engine thread failed")
            self.failed = f"internal engine error: {exc}"
            self._fail_all(EngineFailed(f"internal engine error: {exc}"))
        finally:
            try:
                engine.shutdown()
            except Exception:
                log.exception("could not tell the other ranks to shut down")

    def _add(self, sub: Submission) -> None:
        with self._cond:
            if sub.request_id not in self._streams:
                return  # aborted before it reached the engine
        try:
            self.engine.add(sub.request_id, sub.prompt_ids, sub.params)
        except ValueError as exc:
            self._deliver_one(sub.request_id, EngineFailed(str(exc)))

    def _dispatch(self, reports: list[RequestOutput]) -> None:
        by_stream: dict[int, tuple[_Stream, list[RequestOutput]]] = {}
        with self._cond:
            for report in reports:
                stream = self._streams.get(report.request_id)
                if stream is None:
                    continue
                if report.finished:
                    del self._streams[report.request_id]
                by_stream.setdefault(id(stream), (stream, []))[1].append(report)
        for stream, items in by_stream.values():
            _post(stream, items)

    def _deliver_one(self, request_id: str, item: EngineFailed) -> None:
        with self._cond:
            stream = self._streams.pop(request_id, None)
            self._unstarted.pop(request_id, None)
        if stream is not None:
            _post(stream, [item])

    def _fail_all(self, error: EngineFailed) -> None:
        with self._cond:
            streams, self._streams = list(self._streams.values()), {}
            self._unstarted.clear()
            self._stopping = True
        for stream in {id(s): s for s in streams}.values():
            _post(stream, [error])


def _post(stream: _Stream, items: Sequence[RequestOutput | EngineFailed]) -> None:
    try:
        stream.loop.call_soon_threadsafe(_put_all, stream.queue, items)
    except RuntimeError:  # the server's loop has closed (shutting down): nobody is listening
        pass


def _put_all(queue: asyncio.Queue[RequestOutput | EngineFailed], items: Sequence[RequestOutput | EngineFailed]) -> None:
    for item in items:
        queue.put_nowait(item)

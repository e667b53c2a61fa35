"""Claim, heartbeat, progress, finish, requeue, cancel and reap: the life of every long job.

A run of a job kind looks like this (the kind's Celery task calls it with the job id):

    claim = job_claim(ReshardJob, job_id=job_id)
    if claim is None:
        return  # finished, running elsewhere with a fresh heartbeat, cancelled or unknown: a no-op
    try:
        with claim.heartbeat():                  # a thread beats every policy.heartbeat_seconds
            claim.set_phase("converting")
            work(progress=lambda done, total: claim.progress(bytes_done=done, bytes_total=total))
        claim.finish(JobStatus.SUCCEEDED, report=...)
    except JobCancelled:
        claim.finish(JobStatus.CANCELLED, error_message="Cancelled on request.")
    except JobLost:
        pass                                     # a newer attempt owns the row; touch nothing

The attempt number is the fencing token: every write of a running attempt is an UPDATE conditioned on
`status=running AND attempts=<ours>`, so an attempt whose claim went stale and was taken over can no
longer change the row. A subprocess (e.g. `torchrun`) runs under `jobs.runner.run_command` with
`heartbeat=claim.beat`, which kills its process group when the job is cancelled or lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone
from django.utils.module_loading import import_string

from access.errors import Conflict
from jobs.kinds import JobKind, JobPolicy, all_kinds, kind_of
from jobs.models import Job, JobStatus

log = logging.getLogger(__name__)

J = TypeVar("J", bound=Job)

# Progress rows are written at most this often (a heartbeat rides along with each).
PROGRESS_INTERVAL_SECONDS = 1.0


class JobLost(Exception):
    """This attempt no longer owns the job: the reaper requeued or failed it, or a newer attempt claimed it."""


class JobCancelled(Exception):
    """Someone asked to cancel the job; the attempt stops and records it."""


class RetryLater(Exception):
    """A transient fault: the job is queued again and the task should retry after `seconds`."""

    def __init__(self, message: str, *, seconds: int) -> None:
        super().__init__(message)
        self.seconds = seconds


def retry_delay(attempt: int) -> int:
    """Seconds before retry number `attempt` (1, 2, ...): 60, 120, 240, ... capped at 15 minutes."""
    return int(min(60 * 2 ** max(attempt - 1, 0), 900))


# --- Dispatch ---------------------------------------------------------------------------------


def job_dispatch(job: Job, *, countdown: int | None = None) -> None:
    """Send the job's task message once the current transaction commits (at once outside one).

    robust: with the broker down the job stays queued, and the reaper sends it again later.
    """
    kind, job_id = kind_of(job), job.pk
    transaction.on_commit(lambda: _send(kind, job_id, countdown=countdown), robust=True)


def _send(kind: JobKind, job_id: int, *, countdown: int | None = None) -> None:
    import_string(kind.task).apply_async(args=[job_id], countdown=countdown)


# --- A running attempt ------------------------------------------------------------------------


class Claim(Generic[J]):
    """One attempt's hold on a job row. Every write goes through `fenced()`."""

    def __init__(self, job: J, kind: JobKind) -> None:
        self.job = job
        self.kind = kind
        self.attempt = job.attempts
        self.policy: JobPolicy = kind.policy()
        self._stopped: type[Exception] | None = None  # JobCancelled or JobLost, once noticed
        self._last_progress = float("-inf")

    def fenced(self) -> QuerySet[J]:
        """Rows this attempt may still write: the job, running, claimed by this very attempt."""
        return type(self.job)._default_manager.filter(pk=self.job.pk, status=JobStatus.RUNNING, attempts=self.attempt)

    def _write_live(self, **values: Any) -> bool:
        """Write while neither lost nor cancelled; on a refusal remember which it was."""
        if self.fenced().filter(cancel_requested_at__isnull=True).update(**values):
            return True
        self._stopped = JobCancelled if self.fenced().exists() else JobLost
        return False

    def beat(self) -> bool:
        """Write the heartbeat; False once the job was cancelled or this attempt lost it (stop then)."""
        if self._stopped is not None:
            return False
        try:
            return self._write_live(heartbeat_at=timezone.now())
        except DatabaseError as error:  # a blip must not kill the job; the next beat retries
            log.warning("%s: heartbeat failed: %s", self.job, error)
            return True

    def check(self) -> None:
        """Raise JobCancelled or JobLost if the heartbeat (or a write) noticed either."""
        if self._stopped is not None:
            raise self._stopped(f"{type(self.job).__name__} #{self.job.pk} attempt {self.attempt}")

    def progress(self, *, force: bool = False, **values: Any) -> None:
        """Record progress columns (and a heartbeat) at most once a second unless `force`."""
        self.check()
        now = time.monotonic()
        if not force and now - self._last_progress < PROGRESS_INTERVAL_SECONDS:
            return
        self._last_progress = now
        if not self._write_live(heartbeat_at=timezone.now(), **values):
            self.check()

    def set_phase(self, phase: str) -> None:
        self.progress(force=True, phase=phase)
        self.job.phase = phase

    def finish(self, status: str, **values: Any) -> bool:
        """The attempt's last write (a cancel request does not block it); False if the job was lost."""
        now = timezone.now()
        return bool(self.fenced().update(status=status, finished_at=now, heartbeat_at=now, phase="", **values))

    def requeue(self, *, message: str) -> bool:
        """Give the job back to the queue after a transient fault (the caller schedules the retry).

        False, with the row untouched, if the job was lost or a cancel was asked meanwhile: then end
        the attempt instead (`finish(CANCELLED)`, a no-op when lost), since a queued job with a cancel
        request is never claimed again.
        """
        now = timezone.now()
        return self._write_live(
            status=JobStatus.QUEUED, heartbeat_at=now, dispatched_at=now, phase="", error_message=message
        )

    @contextmanager
    def heartbeat(self) -> Iterator[Claim[J]]:
        """Beat from a thread while the body runs, through phases that report no progress."""
        stop = threading.Event()

        def run() -> None:
            try:
                while not stop.wait(self.policy.heartbeat_seconds) and self.beat():
                    pass
            finally:
                connection.close()  # this thread's own connection

        thread = threading.Thread(target=run, name=f"{self.job}-heartbeat", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=30)


def job_claim(model: type[J], *, job_id: int, reset: Mapping[str, Any] | None = None) -> Claim[J] | None:
    """Take the job if it is queued, or running with a stale heartbeat and attempts left; None otherwise.

    The conditional UPDATE makes a duplicate delivery, a re-run of a finished job and a cancelled job
    no-ops. `reset` clears the kind's progress columns for the new attempt.
    """
    kind = kind_of(model)
    policy = kind.policy()
    now = timezone.now()
    stale = now - timedelta(seconds=policy.stale_seconds)
    claimed = (
        model._default_manager.filter(pk=job_id, cancel_requested_at__isnull=True)
        .filter(
            Q(status=JobStatus.QUEUED)
            | Q(status=JobStatus.RUNNING, heartbeat_at__lt=stale, attempts__lt=policy.max_attempts)
        )
        .update(
            status=JobStatus.RUNNING,
            started_at=now,
            heartbeat_at=now,
            attempts=F("attempts") + 1,
            error_message="",
            phase="",
            **(reset or {}),
        )
    )
    if not claimed:
        return None
    return Claim(model._default_manager.get(pk=job_id), kind)


# --- Cancel -----------------------------------------------------------------------------------


def job_cancel(*, job: J, message: str = "Cancelled on request.") -> J:
    """A queued job is cancelled at once; a running one is asked to stop and stops at its next heartbeat."""
    model = type(job)
    now = timezone.now()
    if model._default_manager.filter(pk=job.pk, status=JobStatus.QUEUED).update(
        status=JobStatus.CANCELLED, cancel_requested_at=now, finished_at=now, error_message=message
    ):
        job.refresh_from_db()
        _abandon(kind_of(job), job)
        return job
    if not model._default_manager.filter(pk=job.pk, status=JobStatus.RUNNING, cancel_requested_at__isnull=True).update(
        cancel_requested_at=now, error_message=message
    ):
        job.refresh_from_db()
        if job.status != JobStatus.RUNNING:
            raise Conflict(
                f"{job} is {job.get_status_display().lower()}; only queued or running jobs can be cancelled."
            )
    job.refresh_from_db()
    return job


# --- The reaper -------------------------------------------------------------------------------


def jobs_reap(*, now: datetime | None = None) -> int:
    """For every job kind: running jobs whose heartbeat went stale are queued again with backoff, or
    failed once out of attempts (cancelled if a cancel was asked); queued jobs nobody claimed for
    JOBS_REDISPATCH_SECONDS have their message sent again. Returns how many jobs it acted on."""
    now = now or timezone.now()
    return sum(_reap_stale(kind, now) + _redispatch_lost(kind, now) for kind in all_kinds())


def _reap_stale(kind: JobKind, now: datetime) -> int:
    policy = kind.policy()
    model = kind.model
    stale = model._default_manager.filter(
        status=JobStatus.RUNNING, heartbeat_at__lt=now - timedelta(seconds=policy.stale_seconds)
    )
    reaped = 0
    for job in stale:
        unchanged = model._default_manager.filter(
            pk=job.pk, status=JobStatus.RUNNING, heartbeat_at=job.heartbeat_at, attempts=job.attempts
        )
        if job.cancel_requested_at is not None:
            if unchanged.update(status=JobStatus.CANCELLED, finished_at=now, phase=""):
                _abandon(kind, job)
                reaped += 1
        elif job.attempts >= policy.max_attempts:
            if unchanged.update(
                status=kind.failed_status,
                finished_at=now,
                phase="",
                error_message=f"The worker stopped sending heartbeats ({job.attempts} attempts); start the job again.",
            ):
                _abandon(kind, job)
                reaped += 1
        else:
            delay = retry_delay(job.attempts)
            if unchanged.update(
                status=JobStatus.QUEUED,
                phase="",
                dispatched_at=now,
                error_message=f"Attempt {job.attempts} stopped sending heartbeats; queued again (in {delay} s).",
            ):
                _send_now(kind, job.pk, countdown=delay)
                reaped += 1
    return reaped


def _redispatch_lost(kind: JobKind, now: datetime) -> int:
    """Duplicates are harmless: runs claim the row."""
    cutoff = now - timedelta(seconds=settings.JOBS_REDISPATCH_SECONDS)
    model = kind.model
    sent = 0
    for job in model._default_manager.filter(status=JobStatus.QUEUED, dispatched_at__lt=cutoff)[:500]:
        if model._default_manager.filter(pk=job.pk, status=JobStatus.QUEUED, dispatched_at__lt=cutoff).update(
            dispatched_at=now
        ):
            _send_now(kind, job.pk)
            sent += 1
    return sent


def _send_now(kind: JobKind, job_id: int, *, countdown: int | None = None) -> None:
    """The reaper's rows are already committed (or are the caller's to commit): send at once. A broker
    that is down leaves the job queued, and a later reap sends it again."""
    try:
        _send(kind, job_id, countdown=countdown)
    except Exception:  # noqa: BLE001 - one unsendable message must not stop the reap of the others
        log.exception("%s #%s: could not send its task message; the next reap tries again", kind.model.__name__, job_id)


def _abandon(kind: JobKind, job: Job) -> None:
    if kind.on_abandon is None:
        return
    job.refresh_from_db()
    try:
        kind.on_abandon(job)
    except Exception:  # noqa: BLE001 - the row is already final; a failed cleanup must not undo the reap
        log.exception("%s: cleanup after it was abandoned failed", job)

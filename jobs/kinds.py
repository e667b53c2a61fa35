"""The registry of job kinds. Each kind says which Celery task runs one of its jobs, its policy, and
what to clean up when the reaper gives up on a job; the reaper walks every registered kind.

Kinds register in their app's `AppConfig.ready()`:

    register(JobKind(model=ReshardJob, task="artifacts.tasks.run_reshard_job", policy=reshard_policy))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from jobs.models import Job, JobStatus


@dataclass(frozen=True)
class JobPolicy:
    # A running job whose heartbeat is older than this is presumed dead (its worker was lost).
    stale_seconds: int
    # Attempts (claims) a job gets before the reaper or a transient fault fails it for good.
    max_attempts: int
    # How often a running attempt writes its heartbeat; well under `stale_seconds`.
    heartbeat_seconds: float


@dataclass(frozen=True)
class JobKind:
    model: type[Job]
    # Dotted path of the Celery task that runs one job; it takes the job id.
    task: str
    # Read at each use, so settings changed at run time (tests, a reload) apply.
    policy: Callable[[], JobPolicy]
    # The status of a job that could not finish (verification keeps "failed" for a quarantine verdict).
    failed_status: str = JobStatus.FAILED
    # Called after the reaper failed a job or a job was cancelled before it ran: release what the
    # job held (a checkpoint state, a work folder). Runs outside any attempt; must be idempotent.
    on_abandon: Callable[[Job], None] | None = None


_KINDS: dict[type[Job], JobKind] = {}


def register(kind: JobKind) -> None:
    _KINDS[kind.model] = kind


def kind_of(job_or_model: Job | type[Job]) -> JobKind:
    model = job_or_model if isinstance(job_or_model, type) else type(job_or_model)
    try:
        return _KINDS[model]
    except KeyError:
        raise LookupError(
            f"{model.__name__} is not a registered job kind; call jobs.kinds.register() in its AppConfig.ready()."
        ) from None


def all_kinds() -> list[JobKind]:
    return list(_KINDS.values())

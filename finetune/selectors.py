"""Reads of the fine-tuning app. Guarded rows have one door each:

- `access_dataset`, `access_training_job`: the owner's own rows (404 for everyone else, operators included:
  they use the operator door);
- `access_operator_training_job`: reviewers and superusers (`access.selectors.is_reviewer`), any job.
"""

from __future__ import annotations

import json
from typing import Any

from django.db.models import QuerySet, Sum
from django.http import Http404

from access.selectors import is_reviewer, release_access_check
from artifacts.models import Checkpoint
from artifacts.selectors import downloadable_checkpoints
from finetune.models import TrainingDataset, TrainingJob
from jobs.models import ACTIVE_STATUSES, JobStatus


def _pk(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise Http404("No such row.") from None
    if not 0 < number < 2**63:
        raise Http404("No such row.")
    return number


def access_dataset(*, actor: Any, dataset_id: Any) -> TrainingDataset:
    if not (actor and actor.is_authenticated):
        raise Http404("No such dataset.")
    dataset = TrainingDataset.objects.select_related("checkpoint__release").filter(pk=_pk(dataset_id)).first()
    if dataset is None or dataset.owner_id != actor.pk:
        raise Http404("No such dataset.")
    return dataset


def _jobs() -> QuerySet[TrainingJob]:
    return TrainingJob.objects.select_related(
        "owner", "base_checkpoint__release", "release", "dataset", "result", "grant"
    )


def access_training_job(*, actor: Any, job_id: Any, operators: bool = False) -> TrainingJob:
    """The actor's own job (and, with `operators`, any job for operators and reviewers); 404 for anyone
    else (no existence leak)."""
    if not (actor and actor.is_authenticated):
        raise Http404("No such training job.")
    job = _jobs().filter(pk=_pk(job_id)).first()
    if job is None or (job.owner_id != actor.pk and not (operators and is_reviewer(actor))):
        raise Http404("No such training job.")
    return job


def access_operator_training_job(*, actor: Any, job_id: Any) -> TrainingJob:
    if not is_reviewer(actor):
        raise Http404("No such training job.")
    job = _jobs().filter(pk=_pk(job_id)).first()
    if job is None:
        raise Http404("No such training job.")
    return job


def user_training_jobs(*, user: Any) -> QuerySet[TrainingJob]:
    return _jobs().filter(owner=user)


def user_datasets(*, user: Any) -> QuerySet[TrainingDataset]:
    return TrainingDataset.objects.select_related("checkpoint__release").filter(owner=user)


def all_training_jobs() -> QuerySet[TrainingJob]:
    return _jobs()


def trainable_checkpoints(*, user: Any) -> list[Checkpoint]:
    """Checkpoints the user may fine-tune: ready, of a release they may use now (their own results included)."""
    return downloadable_checkpoints(user=user)


def gpu_hours_used(*, user: Any, exclude_job_id: int | None = None) -> float:
    """What counts against the user's cap: GPU-hours finished attempts used, plus the whole time limit of
    every queued or running job (it may use all of it)."""
    jobs = TrainingJob.objects.filter(owner=user)
    if exclude_job_id is not None:
        jobs = jobs.exclude(pk=exclude_job_id)
    used = float(jobs.exclude(status__in=ACTIVE_STATUSES).aggregate(total=Sum("gpu_seconds"))["total"] or 0.0) / 3600
    reserved = sum(
        job.gpus * job.max_hours for job in jobs.filter(status__in=ACTIVE_STATUSES).only("gpus", "max_hours")
    )
    return used + reserved


def job_may_run(job: TrainingJob) -> tuple[bool, str]:
    """Is the owner still allowed to use the release (grant active, license accepted)?"""
    decision = release_access_check(user=job.owner, release=job.release)
    return decision.allowed, decision.message


def job_logbook(job: TrainingJob, *, limit: int = 5000) -> list[dict[str, Any]]:
    """The run's logbook events (the file the engine writes), oldest first; [] before the first attempt."""
    path = job.run_dir() / "logbook.jsonl"
    if not path.is_file():
        return []
    events: list[dict[str, Any]] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a killed process
            if isinstance(record, dict) and "event" in record:
                events.append(record)
    return events[-limit:]


TIMELINE_EVENTS = (
    "start",
    "resume",
    "restart",
    "operator",
    "spike",
    "rollback",
    "checkpoint",
    "export",
    "done",
    "error",
)


def job_timeline(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every event but the per-step ones, for the page's timeline."""
    return [event for event in events if event.get("event") in TIMELINE_EVENTS]


def job_eta_seconds(job: TrainingJob, events: list[dict[str, Any]]) -> float | None:
    """Seconds left at the median pace of the last steps; None when not running or unknown."""
    if job.status != JobStatus.RUNNING or not job.total_steps:
        return None
    seconds = sorted(float(e["seconds"]) for e in events[-200:] if e.get("event") == "step" and e.get("seconds"))
    if not seconds:
        return None
    return seconds[len(seconds) // 2] * max(job.total_steps - job.step, 0)

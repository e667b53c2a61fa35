"""Reads of the artifacts app. Guarded rows have one door each:

- `access_downloadable_checkpoint`: a ready checkpoint the actor may download now (404 when it does not
  exist or is not ready; AccessRefused with the access decision's message otherwise);
- `access_operator_checkpoint`, `access_reshard_job`: reviewers and superusers only (`access.selectors.is_reviewer`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Count, Max, Q, QuerySet, Sum
from django.http import Http404

from access.errors import AccessRefused
from access.models import Grant
from access.selectors import AccessDecision, is_reviewer, release_access_check
from artifacts.models import Checkpoint, CheckpointFile, CheckpointState, DownloadEvent, ReshardJob, VerificationJob


def _checkpoint_by_id(checkpoint_id: Any) -> Checkpoint:
    try:
        return Checkpoint.objects.select_related("release__license", "derived_from").get(pk=int(checkpoint_id))
    except (Checkpoint.DoesNotExist, ValueError, TypeError):
        raise Http404("No such checkpoint.") from None


def access_downloadable_checkpoint(*, actor: Any, checkpoint_id: Any) -> tuple[Checkpoint, AccessDecision]:
    checkpoint = _checkpoint_by_id(checkpoint_id)
    if checkpoint.state != CheckpointState.READY or not checkpoint.release.is_listed:
        raise Http404("No such checkpoint.")
    if checkpoint.owner_id is not None and checkpoint.owner_id != getattr(actor, "pk", None):
        raise Http404("No such checkpoint.")  # someone's private checkpoint (a fine-tuning result)
    decision = release_access_check(user=actor, release=checkpoint.release)
    if not decision.allowed:
        raise AccessRefused(decision, release=checkpoint.release)
    return checkpoint, decision


def access_operator_checkpoint(*, actor: Any, checkpoint_id: Any) -> Checkpoint:
    if not is_reviewer(actor):
        raise Http404("No such checkpoint.")
    return _checkpoint_by_id(checkpoint_id)


def downloadable_checkpoints(*, user: Any) -> list[Checkpoint]:
    """Ready checkpoints of releases the user may use now: the public ones and the user's own private ones."""
    if not (user and user.is_authenticated):
        return []
    checkpoints = list(
        Checkpoint.objects.filter(state=CheckpointState.READY, release__is_listed=True)
        .filter(Q(owner__isnull=True) | Q(owner=user))
        .select_related("release__license")
        .annotate(file_count=Count("files"), total_size=Sum("files__size"))
        .order_by("release__sort_order", "release__slug", "variant")
    )
    allowed: dict[int, bool] = {}
    result: list[Checkpoint] = []
    for checkpoint in checkpoints:
        if checkpoint.release_id not in allowed:
            allowed[checkpoint.release_id] = release_access_check(user=user, release=checkpoint.release).allowed
        if allowed[checkpoint.release_id]:
            result.append(checkpoint)
    return result


def checkpoint_files(checkpoint: Checkpoint) -> QuerySet[CheckpointFile]:
    return checkpoint.files.order_by("path")


def checkpoint_size(checkpoint: Checkpoint) -> int:
    """The bytes of every file of the checkpoint, as stored."""
    return int(checkpoint.files.aggregate(total=Sum("size"))["total"] or 0)


def latest_verification(checkpoint: Checkpoint) -> VerificationJob | None:
    return checkpoint.verification_jobs.order_by("-created_at", "-pk").first()


def operator_checkpoints() -> QuerySet[Checkpoint]:
    return (
        Checkpoint.objects.select_related("release", "derived_from")
        # One join (files), so no distinct: SUM(DISTINCT size) would count equal-sized shards once.
        .annotate(file_count=Count("files"), total_size=Sum("files__size"))
        .order_by("release__slug", "variant")
    )


def checkpoint_download_counts() -> dict[int, Mapping[str, Any]]:
    """Per checkpoint: full-file equivalents served, requests, distinct users, bytes."""
    rows = (
        DownloadEvent.objects.values("file__checkpoint_id")
        .annotate(
            requests=Count("pk"), users=Count("user", distinct=True), bytes=Sum("bytes_served"), last=Max("created_at")
        )
        .order_by()
    )
    return {row["file__checkpoint_id"]: row for row in rows}


@dataclass
class GrantDownloads:
    grant: Grant | None
    user_email: str
    release_name: str
    files: int
    bytes: int
    last_activity: datetime | None


def downloads_by_grant() -> list[GrantDownloads]:
    """Downloads per grant (gated releases) and per user (open releases, no grant), latest first."""
    rows = (
        DownloadEvent.objects.values("grant_id", "user__email", "file__checkpoint__release__name")
        .annotate(files=Count("file", distinct=True), bytes=Sum("bytes_served"), last=Max("created_at"))
        .order_by("-last")
    )
    grants = Grant.objects.in_bulk([row["grant_id"] for row in rows if row["grant_id"]])
    return [
        GrantDownloads(
            grant=grants.get(row["grant_id"]),
            user_email=row["user__email"],
            release_name=row["file__checkpoint__release__name"],
            files=row["files"],
            bytes=row["bytes"] or 0,
            last_activity=row["last"],
        )
        for row in rows
    ]


def grant_file_downloads(grant: Grant) -> list[Mapping[str, Any]]:
    return list(
        DownloadEvent.objects.filter(grant=grant)
        .values("file_id", "file__path", "file__size", "file__checkpoint__variant")
        .annotate(requests=Count("pk"), bytes=Sum("bytes_served"), last=Max("created_at"))
        .order_by("file__checkpoint__variant", "file__path")
    )


def grant_recent_events(grant: Grant, limit: int = 50) -> QuerySet[DownloadEvent]:
    return DownloadEvent.objects.filter(grant=grant).select_related("file")[:limit]


# --- Reshard jobs -----------------------------------------------------------------------------


def access_reshard_job(*, actor: Any, job_id: Any) -> ReshardJob:
    """The job for operators and reviewers; 404 for everyone else and for unknown ids."""
    if not is_reviewer(actor):
        raise Http404("No such reshard job.")
    try:
        return ReshardJob.objects.select_related("source__release", "output", "requested_by").get(pk=int(job_id))
    except (ReshardJob.DoesNotExist, ValueError, TypeError):
        raise Http404("No such reshard job.") from None


def checkpoint_reshard_jobs(checkpoint: Checkpoint) -> QuerySet[ReshardJob]:
    return checkpoint.reshard_jobs.select_related("output", "requested_by").order_by("-created_at", "-pk")


def reshard_job_progress(job: ReshardJob) -> dict[str, Any]:
    """What the live jobs table and the API show for one job."""
    return {
        "id": job.pk,
        "source": job.source_id,
        "to": job.target_format,
        "tp": job.tp_size,
        "dtype": job.dtype,
        "status": job.status,
        "phase": job.phase,
        "bytes_done": job.bytes_done,
        "bytes_total": job.bytes_total,
        "tensors_done": job.tensors_done,
        "tensors_total": job.tensors_total,
        "percent": round(job.percent, 1),
        "attempts": job.attempts,
        "heartbeat_at": job.heartbeat_at.isoformat() if job.heartbeat_at else None,
        "error": job.error_message,
        "exit_code": job.exit_code,
        "output": job.output_id,
    }

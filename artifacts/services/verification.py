"""Verifying a checkpoint: hash every stored file and decide ready or quarantined."""

from __future__ import annotations

import logging
import time
from functools import partial

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from access.errors import Conflict, NotAllowed
from access.models import User
from access.selectors import is_reviewer
from access.services.audit import SYSTEM, RequestMeta, audit_record
from artifacts.hashing import Progress, hash_files
from artifacts.models import (
    Checkpoint,
    CheckpointFile,
    CheckpointState,
    ChecksumSource,
    VerificationJob,
    VerificationStatus,
)
from artifacts.selectors import checkpoint_size
from artifacts.storage import get_storage
from jobs.kinds import JobKind, JobPolicy
from jobs.models import ACTIVE_STATUSES, Job
from jobs.services import JobCancelled, JobLost, job_claim, job_dispatch

log = logging.getLogger(__name__)


def verification_policy() -> JobPolicy:
    return JobPolicy(
        stale_seconds=settings.ARTIFACTS_VERIFY_STALE_SECONDS,
        max_attempts=settings.ARTIFACTS_VERIFY_MAX_ATTEMPTS,
        heartbeat_seconds=settings.ARTIFACTS_VERIFY_HEARTBEAT_SECONDS,
    )


def _verification_abandoned(job: Job) -> None:
    """The reaper gave up on the job (or it was cancelled): the bytes were not judged, so no quarantine."""
    assert isinstance(job, VerificationJob)
    Checkpoint.objects.filter(pk=job.checkpoint_id, state=CheckpointState.VERIFYING).update(
        state=CheckpointState.REGISTERED,
        state_reason=f"Verification #{job.pk} did not finish ({job.error_message or job.status}); verify again.",
    )


VERIFICATION_JOBS = JobKind(
    model=VerificationJob,
    task="artifacts.tasks.verify_checkpoint",
    policy=verification_policy,
    failed_status=VerificationStatus.ERROR,
    on_abandon=_verification_abandoned,
)


def verification_enqueue(
    *, checkpoint: Checkpoint, actor: User | None = None, dispatch: bool = True
) -> VerificationJob:
    """Queue a verification pass; with one already queued or running, return that one instead."""
    if checkpoint.state == CheckpointState.RETIRED:
        raise Conflict(f"{checkpoint} is retired; it is not verified any more.")
    with transaction.atomic():
        Checkpoint.objects.select_for_update().filter(pk=checkpoint.pk).first()
        active = checkpoint.verification_jobs.filter(status__in=ACTIVE_STATUSES).first()
        if active is not None:
            return active
        job = VerificationJob.objects.create(
            checkpoint=checkpoint,
            requested_by=actor if actor is not None and actor.is_authenticated else None,
            files_total=checkpoint.files.count(),
            bytes_total=checkpoint_size(checkpoint),
        )
        if dispatch:
            job_dispatch(job)
    return job


def verification_run(*, job_id: int, workers: int | None = None) -> VerificationJob | None:
    """Hash every stored file of the job's checkpoint and decide: ready or quarantined.

    Claims the job (jobs.services.job_claim), so a duplicate delivery or a re-run of a finished job
    does nothing; a job whose worker died (stale heartbeat) may be claimed again. A cancel stops the
    hashing at the next progress tick.
    """
    claim = job_claim(VerificationJob, job_id=job_id, reset={"bytes_hashed": 0, "files_done": 0})
    if claim is None:
        return VerificationJob.objects.filter(pk=job_id).first()
    job = claim.job
    checkpoint = Checkpoint.objects.select_related("release").get(pk=job.checkpoint_id)
    if (
        not Checkpoint.objects.filter(pk=checkpoint.pk)
        .exclude(state=CheckpointState.RETIRED)
        .update(state=CheckpointState.VERIFYING, state_reason=f"Verification #{job.pk} running.")
    ):
        claim.finish(VerificationStatus.ERROR, error_message="The checkpoint was retired before verification started.")
        job.refresh_from_db()
        return job
    files = list(checkpoint.files.order_by("path"))
    storage = get_storage()

    def tick(progress: Progress) -> None:
        claim.progress(bytes_hashed=progress.bytes_hashed, files_done=progress.files_done)

    started = time.monotonic()
    try:
        claim.progress(force=True, files_total=len(files), bytes_total=sum(f.size for f in files))
        with claim.heartbeat():
            digests, failures = hash_files(
                [(f.path, partial(storage.open_read, f.storage_key)) for f in files],
                workers=workers if workers is not None else settings.ARTIFACTS_VERIFY_WORKERS,
                on_tick=tick,
            )
    except JobLost:
        log.info("verification %s: attempt %s lost its claim; leaving the job to the reaper", job.pk, claim.attempt)
        job.refresh_from_db()
        return job
    except JobCancelled:
        claim.finish(VerificationStatus.CANCELLED)
        job.refresh_from_db()
        _verification_abandoned(job)
        return job
    except Exception as error:
        # A time limit or a crash of the pool: the bytes were not judged, so no quarantine.
        claim.finish(VerificationStatus.ERROR, error_message=f"{type(error).__name__}: {error}")
        job.refresh_from_db()
        _verification_abandoned(job)
        raise
    seconds = time.monotonic() - started

    by_path = {f.path: f for f in files}
    problems: dict[str, list[str]] = {}
    for failure in failures:
        problems.setdefault(failure.name, []).append(f"unreadable: {failure.error}")
    computed = {d.name: d for d in digests}
    for name, digest in computed.items():
        row = by_path[name]
        if digest.size != row.size:
            problems.setdefault(name, []).append(f"size {digest.size} bytes, registered {row.size}")
        if row.expected_sha256 and digest.sha256 != row.expected_sha256:
            problems.setdefault(name, []).append(
                f"sha256 {digest.sha256} does not match the {row.get_expected_source_display().lower()} "
                f"{row.expected_sha256}"
            )
        if row.expected_md5 and digest.md5 != row.expected_md5:
            problems.setdefault(name, []).append(
                f"md5 {digest.md5} does not match the {row.get_expected_source_display().lower()} {row.expected_md5}"
            )
    unmatched = list((checkpoint.published_checksums or {}).get("unmatched", []))
    for name in unmatched:
        problems.setdefault(name, []).append("listed in the published checksums but missing from the checkpoint")

    finished = timezone.now()
    bad_files = [{"path": name, "problem": "; ".join(items)} for name, items in sorted(problems.items())]
    report = {
        "bad_files": bad_files,
        "checked": len(digests),
        "bytes": sum(d.size for d in digests),
        "seconds": round(seconds, 3),
        "published_list": (checkpoint.published_checksums or {}).get("kind"),
    }
    with transaction.atomic():
        if claim.fenced().select_for_update().first() is None:
            log.info("verification %s: attempt %s lost its claim before deciding", job.pk, claim.attempt)
            job.refresh_from_db()
            return job
        for name, digest in computed.items():
            row = by_path[name]
            ok = name not in problems
            row.sha256, row.md5 = digest.sha256, digest.md5
            row.error = "" if ok else "; ".join(problems[name])
            row.verified_at = finished if ok else None
            if ok:
                # Trust anchors for the next pass: the published sum, else this first verification.
                row.expected_source = row.expected_source or ChecksumSource.FIRST_VERIFICATION
                row.expected_sha256 = row.expected_sha256 or digest.sha256
                row.expected_md5 = row.expected_md5 or digest.md5
            row.save(
                update_fields=[
                    "sha256",
                    "md5",
                    "error",
                    "verified_at",
                    "expected_sha256",
                    "expected_md5",
                    "expected_source",
                ]
            )
        for failure in failures:
            CheckpointFile.objects.filter(pk=by_path[failure.name].pk).update(
                error="; ".join(problems[failure.name]), verified_at=None
            )
        if bad_files:
            names = ", ".join(item["path"] for item in bad_files[:5]) + (" …" if len(bad_files) > 5 else "")
            Checkpoint.objects.filter(pk=checkpoint.pk, state=CheckpointState.VERIFYING).update(
                state=CheckpointState.QUARANTINED,
                state_reason=f"Verification #{job.pk} found {len(bad_files)} bad file(s): {names}.",
            )
            claim.finish(VerificationStatus.FAILED, report=report, files_done=len(files), bytes_hashed=report["bytes"])
            action = "checkpoint.quarantine"
        else:
            Checkpoint.objects.filter(pk=checkpoint.pk, state=CheckpointState.VERIFYING).update(
                state=CheckpointState.READY,
                verified_at=finished,
                state_reason=f"Verified by #{job.pk}: {len(digests)} files, {report['bytes']} bytes.",
            )
            claim.finish(
                VerificationStatus.SUCCEEDED, report=report, files_done=len(files), bytes_hashed=report["bytes"]
            )
            action = "checkpoint.verify"
        audit_record(
            actor=None,
            action=action,
            target=checkpoint,
            meta=SYSTEM,
            after={"job": job.pk, "bad_files": bad_files[:20]},
        )
    job.refresh_from_db()
    return job


def checkpoint_verify_again(*, checkpoint: Checkpoint, actor: User, meta: RequestMeta) -> VerificationJob:
    if not is_reviewer(actor):
        raise NotAllowed("Only operators and reviewers can start a verification.")
    job = verification_enqueue(checkpoint=checkpoint, actor=actor)
    audit_record(actor=actor, action="checkpoint.verify_again", target=checkpoint, meta=meta, after={"job": job.pk})
    return job

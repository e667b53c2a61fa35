"""Running a reshard job: convert a ready checkpoint into another format, tensor-parallel layout or dtype, and
register the result as a new checkpoint of the same release (so the release's access rules apply).

The seam between the Django world and the plain-PyTorch `reshard` library. A run:

1. claims the job (`jobs.services.job_claim`: queued → running, or a running job whose heartbeat went
   stale → running); the attempt number is the fencing token every later UPDATE carries, so a worker
   that lost its claim can no longer touch the row, and a cancel stops the run at its next heartbeat;
2. materialises the source files in a work folder (`ARTIFACTS_RESHARD_WORK_DIR/job-<id>/<release>-<variant>`):
   symlinks into local storage, or a download from S3 (kept across retries);
3. runs `reshard.convert` into `.../job-<id>/output` (reshard writes a temp dir next to it and renames
   it into place, and removes the temp dirs of killed runs), reporting progress at most once a second;
4. runs `reshard.verify` on the output: checksums and structure, plus numerics against the source when
   the source is small (`ARTIFACTS_RESHARD_NUMERICS_MAX_BYTES`);
5. stores every output file (atomic writes, re-hashed on the way up and compared with the manifest),
   then creates the Checkpoint, its files and the job's success in ONE transaction. Until that commit
   no row names the new checkpoint, so nothing partial is ever listed or served; a killed run leaves
   at most stored objects without rows, which the retry overwrites with the same bytes.

Failures: reshard's own errors (bad options, bad input, failed verification, unsafe pickle) fail the
job permanently with the message and exit code; OSError and storage errors are transient and retried
with backoff up to `ARTIFACTS_RESHARD_MAX_ATTEMPTS`.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from access.services.audit import SYSTEM, audit_record
from artifacts.models import (
    Checkpoint,
    CheckpointFormat,
    CheckpointState,
    ReshardFormat,
    ReshardJob,
)
from artifacts.services.files import HashingReader, StoredFile, create_checkpoint_files, materialise
from artifacts.services.reshard import output_variant
from artifacts.storage import StorageError, get_storage
from jobs.kinds import JobKind, JobPolicy
from jobs.models import Job, JobStatus
from jobs.services import Claim, JobCancelled, JobLost, RetryLater, job_claim, retry_delay

log = logging.getLogger(__name__)

OUTPUT_FORMATS = {
    ReshardFormat.NATIVE: CheckpointFormat.NATIVE,
    ReshardFormat.HF: CheckpointFormat.HF,
    ReshardFormat.METASEQ: CheckpointFormat.METASEQ,
}


def reshard_policy() -> JobPolicy:
    return JobPolicy(
        stale_seconds=settings.ARTIFACTS_RESHARD_STALE_SECONDS,
        max_attempts=settings.ARTIFACTS_RESHARD_MAX_ATTEMPTS,
        heartbeat_seconds=settings.ARTIFACTS_RESHARD_HEARTBEAT_SECONDS,
    )


def work_dir(job: ReshardJob) -> Path:
    return Path(settings.ARTIFACTS_RESHARD_WORK_DIR) / f"job-{job.pk}"


def _reshard_abandoned(job: Job) -> None:
    """The reaper gave up on the job (or it was cancelled): its work folder goes (a retry starts afresh)."""
    assert isinstance(job, ReshardJob)
    shutil.rmtree(work_dir(job), ignore_errors=True)


RESHARD_JOBS = JobKind(
    model=ReshardJob,
    task="artifacts.tasks.run_reshard_job",
    policy=reshard_policy,
    on_abandon=_reshard_abandoned,
)


class _Permanent(Exception):
    def __init__(self, message: str, *, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def reshard_job_run(*, job_id: int) -> ReshardJob | None:
    """Run the job if it is queued (or running with a stale heartbeat); otherwise do nothing.

    Raises RetryLater after a transient fault (the job is queued again); every other outcome is
    recorded on the row.
    """
    claim = job_claim(ReshardJob, job_id=job_id, reset={"exit_code": None, "bytes_done": 0, "tensors_done": 0})
    if claim is None:
        return ReshardJob.objects.filter(pk=job_id).first()
    import reshard

    job = claim.job
    work = work_dir(job)
    stored_keys: list[str] = []
    try:
        with claim.heartbeat():
            _run_claimed(claim, work, stored_keys)
    except JobLost:
        log.info(
            "reshard job %s: attempt %s lost its claim; leaving the job to the newer attempt", job.pk, claim.attempt
        )
    except JobCancelled:
        _end(claim, JobStatus.CANCELLED, None, exit_code=None, work=work, stored_keys=stored_keys)
    except reshard.ReshardError as error:
        _end(claim, JobStatus.FAILED, str(error), exit_code=error.exit_code, work=work, stored_keys=stored_keys)
    except _Permanent as error:
        _end(claim, JobStatus.FAILED, str(error), exit_code=error.exit_code, work=work, stored_keys=stored_keys)
    except (OSError, StorageError) as error:
        message = f"attempt {claim.attempt}: {type(error).__name__}: {error}"
        if claim.attempt >= claim.policy.max_attempts:
            _end(
                claim,
                JobStatus.FAILED,
                f"Gave up after {claim.attempt} attempts; last fault: {message}",
                exit_code=1,
                work=work,
                stored_keys=stored_keys,
            )
        else:
            delay = retry_delay(claim.attempt)
            if claim.requeue(message=f"Transient fault, retrying in {delay} s ({message})."):
                raise RetryLater(message, seconds=delay) from error
            _end(claim, JobStatus.CANCELLED, None, exit_code=None, work=work, stored_keys=stored_keys)
    except Exception as error:
        # A bug or the soft time limit: record it, then let the worker log the traceback.
        _end(
            claim, JobStatus.FAILED, f"{type(error).__name__}: {error}", exit_code=1, work=work, stored_keys=stored_keys
        )
        raise
    job.refresh_from_db()
    return job


def _end(
    claim: Claim[ReshardJob],
    status: str,
    message: str | None,
    *,
    exit_code: int | None,
    work: Path,
    stored_keys: list[str],
) -> None:
    """Fail or cancel the job, and remove what this attempt left behind."""
    job = claim.job
    values: dict[str, Any] = {"exit_code": exit_code}
    if message is not None:  # a cancel keeps the message its request wrote
        values["error_message"] = message
    if claim.finish(status, **values):
        audit_record(
            actor=None,
            action="checkpoint.reshard_cancel" if status == JobStatus.CANCELLED else "checkpoint.reshard_fail",
            target=job.source,
            meta=SYSTEM,
            after={"job": job.pk, "exit_code": exit_code, "error": (message or "")[:2000]},
        )
        shutil.rmtree(work, ignore_errors=True)
        # Objects this attempt stored have no rows (nothing serves them); remove them anyway.
        storage = get_storage()
        for key in stored_keys:
            try:
                storage.delete(key)
            except (StorageError, OSError) as error:
                log.warning("reshard job %s: could not delete %s: %s", job.pk, key, error)
    job.refresh_from_db()


def _run_claimed(claim: Claim[ReshardJob], work: Path, stored_keys: list[str]) -> None:
    import reshard

    job = claim.job
    source = Checkpoint.objects.select_related("release").get(pk=job.source_id)
    if source.state != CheckpointState.READY:
        raise _Permanent(
            f"{source} is {source.get_state_display().lower()} now; conversions start from ready "
            "checkpoints. Verify it, then submit the conversion again.",
            exit_code=3,
        )
    variant = output_variant(source, to=job.target_format, tp=job.tp_size, dtype=job.dtype)
    if Checkpoint.objects.filter(release=source.release, variant=variant).exists():
        raise _Permanent(
            f"{source.release.slug}/{variant} already exists; retire or rename it, then submit the conversion again.",
            exit_code=2,
        )
    rows = list(source.files.order_by("path"))

    claim.set_phase("materialising")
    # Named like download.sh's default target folder: reshard records the folder name as the model name
    # (config.json), so converting a download by hand gives these very bytes.
    src_dir = materialise(rows, work / f"{source.release.slug}-{source.variant}", claim)

    claim.set_phase("converting")
    out_dir = work / "output"
    shutil.rmtree(out_dir, ignore_errors=True)  # a finished output of a crashed attempt: convert again (same bytes)

    def progress(bytes_done: int, bytes_total: int, tensors_done: int, tensors_total: int) -> None:
        # Raising here (cancelled, lost) stops the conversion; reshard removes its temp dir.
        claim.progress(
            force=tensors_done >= tensors_total,
            bytes_done=bytes_done,
            bytes_total=bytes_total,
            tensors_done=tensors_done,
            tensors_total=tensors_total,
        )

    result = reshard.convert(src_dir, out_dir, to=job.target_format, tp=job.tp_size, dtype=job.dtype, progress=progress)

    claim.set_phase("verifying")
    source_bytes = sum(row.size for row in rows)
    numerics_max_bytes = settings.ARTIFACTS_RESHARD_NUMERICS_MAX_BYTES
    numerics = source_bytes <= numerics_max_bytes
    verified = reshard.verify(out_dir, against=src_dir if numerics else None)

    claim.set_phase("storing")
    storage = get_storage()
    prefix = f"checkpoints/{source.release.slug}/{variant}"
    stored: list[StoredFile] = []
    for info in sorted(result.files, key=lambda f: f.path):
        key = f"{prefix}/{info.path}"
        stored_keys.append(key)
        with open(out_dir / info.path, "rb") as handle:
            reader = HashingReader(handle)
            storage.write_stream(key, reader, size=info.size)  # type: ignore[arg-type]
        if reader.sha256.hexdigest() != info.sha256:
            raise OSError(
                f"{info.path} changed on the work disk while it was stored; its sha256 no longer matches "
                "the conversion's manifest"
            )
        stored.append((info.path, info.size, info.sha256, reader.md5.hexdigest()))
        claim.progress(force=True)

    report = {
        "seconds": result.seconds,
        "parameter_count": result.parameter_count,
        "source_format": result.source_format,
        "architecture": result.architecture,
        "files": len(stored),
        "bytes": sum(size for _, size, _, _ in stored),
        "verified": {
            "files_checked": verified.files_checked,
            "numerics": verified.numerics,
            "numerics_skipped": None if numerics else f"source larger than {numerics_max_bytes} bytes",
        },
    }
    _publish(claim, source, variant=variant, prefix=prefix, result=result, stored=stored, report=report)
    shutil.rmtree(work, ignore_errors=True)


def _publish(
    claim: Claim[ReshardJob],
    source: Checkpoint,
    *,
    variant: str,
    prefix: str,
    result: Any,
    stored: list[StoredFile],
    report: dict[str, Any],
) -> None:
    """The one moment the output becomes visible: checkpoint, files and the job's success commit together."""
    job = claim.job
    now = timezone.now()
    with transaction.atomic():
        if claim.fenced().select_for_update().first() is None:
            raise JobLost(f"reshard job {job.pk} attempt {claim.attempt}")
        conversion = f"{job.target_format}, tp {result.tp}, {result.dtype}"
        checkpoint = Checkpoint.objects.create(
            release=source.release,
            variant=variant,
            format=OUTPUT_FORMATS[ReshardFormat(job.target_format)],
            tp_size=result.tp,
            dtype=result.dtype,
            state=CheckpointState.READY,
            verified_at=now,
            state_reason=f"Produced and verified by reshard job #{job.pk}: {len(stored)} files.",
            label=f"{source.label or source.variant} → {conversion}"[:200],
            description=f"Converted from {source} ({source.get_format_display()}) by reshard job #{job.pk} "
            f"to {conversion}.",
            derived_from=source,
            produced_by_job={"kind": "reshard", "id": job.pk},
            source_uri=f"reshard-job:{job.pk}",
            storage_prefix=prefix,
        )
        create_checkpoint_files(checkpoint, prefix=prefix, stored=stored, now=now)
        claim.finish(
            JobStatus.SUCCEEDED,
            output=checkpoint,
            bytes_done=F("bytes_total"),
            tensors_done=F("tensors_total"),
            report=report,
        )
        audit_record(
            actor=None,
            action="checkpoint.reshard",
            target=checkpoint,
            meta=SYSTEM,
            after={"job": job.pk, "source": source.pk, "files": len(stored)},
        )

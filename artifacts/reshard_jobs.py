"""Reshard jobs: convert a ready checkpoint into another format, tensor-parallel layout or dtype, and
register the result as a new checkpoint of the same release (so the release's access rules apply).

The seam between the Django world and the plain-PyTorch `reshard` library. A run:

1. claims the job with a conditional UPDATE (queued → running, or a running job whose heartbeat went
   stale → running); the attempt number is the fencing token every later UPDATE carries, so a worker
   that lost its claim can no longer touch the row;
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

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import F, Q, QuerySet
from django.http import Http404
from django.utils import timezone

from access.errors import Conflict, InvalidInput, NotAllowed
from access.models import User
from access.services import SYSTEM, RequestMeta, audit_record
from artifacts.models import (
    Checkpoint,
    CheckpointFile,
    CheckpointFormat,
    CheckpointState,
    ChecksumSource,
    ReshardFormat,
    ReshardJob,
    ReshardStatus,
)
from artifacts.selectors import is_operator
from artifacts.storage import StorageError, get_storage

if TYPE_CHECKING:
    from training import ModelConfig

log = logging.getLogger(__name__)

# Accepted spellings → the dtype name reshard writes (`ConvertResult.dtype`); the short form names variants.
DTYPES = {
    "fp16": "float16",
    "float16": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp32": "float32",
    "float32": "float32",
}
SHORT_DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
OUTPUT_FORMATS = {
    ReshardFormat.NATIVE: CheckpointFormat.NATIVE,
    ReshardFormat.HF: CheckpointFormat.HF,
    ReshardFormat.METASEQ: CheckpointFormat.METASEQ,
}
PROGRESS_INTERVAL_SECONDS = 1.0
_HASH_CHUNK = 8 * 1024 * 1024


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def work_root() -> Path:
    return Path(_setting("ARTIFACTS_RESHARD_WORK_DIR", Path(settings.VAR_DIR) / "reshard-work"))


def stale_seconds() -> int:
    return int(_setting("ARTIFACTS_RESHARD_STALE_SECONDS", 900))


def max_attempts() -> int:
    return int(_setting("ARTIFACTS_RESHARD_MAX_ATTEMPTS", 3))


def _heartbeat_seconds() -> float:
    return float(_setting("ARTIFACTS_RESHARD_HEARTBEAT_SECONDS", 30))


def _numerics_max_bytes() -> int:
    return int(_setting("ARTIFACTS_RESHARD_NUMERICS_MAX_BYTES", 256 * 1024 * 1024))


def retry_delay(attempt: int) -> int:
    """Seconds before retry number `attempt` (1, 2, ...): 60, 120, 240, ... capped at 15 minutes."""
    return int(min(60 * 2 ** max(attempt - 1, 0), 900))


class RetryLater(Exception):
    """A transient fault; the job is queued again and the task should retry after `seconds`."""

    def __init__(self, message: str, *, seconds: int) -> None:
        super().__init__(message)
        self.seconds = seconds


class _Superseded(Exception):
    """Another attempt owns the job now (ours went stale and was reclaimed, or the job was failed)."""


class _Permanent(Exception):
    def __init__(self, message: str, *, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- Selectors --------------------------------------------------------------------------------


def access_reshard_job(*, actor: Any, job_id: Any) -> ReshardJob:
    """The job for operators and reviewers; 404 for everyone else and for unknown ids."""
    if not is_operator(actor):
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


def output_variant(source: Checkpoint, *, to: str, tp: int, dtype: str) -> str:
    return f"{source.variant}-{to}-tp{tp}-{SHORT_DTYPES[dtype]}"


def job_key(source: Checkpoint, *, to: str, tp: int, dtype: str) -> str:
    return f"checkpoint:{source.pk}:{to}:tp{tp}:{dtype}"


# --- Creating a job ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReshardRequest:
    job: ReshardJob
    created: bool


def _source_metadata(checkpoint: Checkpoint) -> tuple[ModelConfig | None, str]:
    """The architecture and dtype from the checkpoint's config.json (transformers or native); no
    architecture for metaseq, whose lives inside the weights (checked when the job runs)."""
    if checkpoint.format not in {CheckpointFormat.HF, CheckpointFormat.NATIVE}:
        return None, ""
    row = checkpoint.files.filter(path="config.json").first()
    if row is None:
        return None, ""
    from reshard.sources import config_from_json
    from training import ModelConfig

    try:
        stream = get_storage().open_read(row.storage_key)
        try:
            data = json.loads(stream.read(4 * 1024 * 1024))
        finally:
            stream.close()
        if checkpoint.format == CheckpointFormat.NATIVE:
            return config_from_json(data["model"], "config.json"), str(data.get("dtype") or "")
        # transformers 5 writes "dtype", older versions "torch_dtype".
        dtype = str(data.get("dtype") or data.get("torch_dtype") or "")
        return ModelConfig.from_hf(data, name=data.get("_name_or_path") or checkpoint.variant), dtype
    except (StorageError, OSError) as error:
        raise InvalidInput(
            f"Could not read config.json of {checkpoint}: {error}. Try again.", field="checkpoint"
        ) from None
    except Exception as error:  # noqa: BLE001 - any parse failure means reshard cannot read it either
        raise InvalidInput(
            f"{checkpoint} cannot be converted: its config.json does not describe a model reshard knows ({error}).",
            field="checkpoint",
        ) from None


def reshard_job_create(
    *,
    checkpoint: Checkpoint,
    to: str,
    tp: int | None = None,
    dtype: str | None = None,
    actor: User,
    meta: RequestMeta,
    dispatch: bool = True,
) -> ReshardRequest:
    """Queue the conversion of `checkpoint` to format `to` with `tp` parts in `dtype`.

    `tp` defaults to the source's (1 for `hf`), `dtype` to the source's. Asking again for a
    conversion that is queued, running or done returns that job (`created=False`).
    """
    if not is_operator(actor):
        raise NotAllowed("Only operators and reviewers can start a conversion.")
    if to not in ReshardFormat.values:
        raise InvalidInput(f"Unknown target format {to!r}; use one of {', '.join(ReshardFormat.values)}.", field="to")
    if tp is None:
        tp = 1 if to == ReshardFormat.HF else checkpoint.tp_size
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise InvalidInput(f"tp {tp!r}: give a positive whole number of tensor-parallel parts.", field="tp")
    if to == ReshardFormat.HF and tp != 1:
        raise InvalidInput(
            f"tp {tp}: transformers checkpoints are not tensor-parallel; set tp to 1 "
            "(or convert to native or metaseq for tp > 1).",
            field="tp",
        )
    if dtype and dtype not in DTYPES:
        raise InvalidInput(f"dtype {dtype!r}: use one of fp16, bf16, fp32.", field="dtype")
    if checkpoint.state != CheckpointState.READY:
        raise InvalidInput(
            f"{checkpoint} is {checkpoint.get_state_display().lower()}; conversions start from ready checkpoints "
            "(verify it first).",
            field="checkpoint",
        )
    config, config_dtype = _source_metadata(checkpoint)
    wanted_dtype = dtype or checkpoint.dtype or config_dtype
    if wanted_dtype not in DTYPES:
        raise InvalidInput(f"{checkpoint} does not record its dtype; choose one of fp16, bf16, fp32.", field="dtype")
    dtype = DTYPES[wanted_dtype]
    if config is not None:
        try:
            config.check_tp(tp)
        except ValueError as error:
            raise InvalidInput(f"tp {tp}: {error}.", field="tp") from None
        if to == ReshardFormat.METASEQ and config.family != "opt":
            raise InvalidInput(
                f"metaseq holds OPT models only; {checkpoint} is a {config.family} model. Convert to native or hf.",
                field="to",
            )

    key = job_key(checkpoint, to=to, tp=tp, dtype=dtype)
    existing = ReshardJob.objects.filter(job_key=key).exclude(status=ReshardStatus.FAILED).first()
    if existing is not None:
        return ReshardRequest(existing, created=False)
    variant = output_variant(checkpoint, to=to, tp=tp, dtype=dtype)
    if len(variant) > 100:
        raise InvalidInput(
            f"The output variant {variant!r} would be longer than 100 characters; import the "
            "source under a shorter variant first.",
            field="checkpoint",
        )
    taken = Checkpoint.objects.filter(release=checkpoint.release, variant=variant).first()
    if taken is not None:
        raise Conflict(f"{taken} already exists, so the output has no name; retire or rename it first.", field="to")

    try:
        with transaction.atomic():
            job = ReshardJob.objects.create(
                source=checkpoint,
                target_format=to,
                tp_size=tp,
                dtype=dtype,
                job_key=key,
                requested_by=actor if actor.is_authenticated else None,
            )
            audit_record(
                actor=actor,
                action="checkpoint.reshard_request",
                target=checkpoint,
                meta=meta,
                after={"job": job.pk, "to": to, "tp": tp, "dtype": dtype},
            )
    except IntegrityError:
        # Someone asked for the same conversion a moment earlier.
        existing = ReshardJob.objects.filter(job_key=key).exclude(status=ReshardStatus.FAILED).first()
        if existing is None:
            raise
        return ReshardRequest(existing, created=False)
    if dispatch:
        from artifacts.tasks import run_reshard_job

        # robust: with the broker down the job stays queued and the reaper sends it again.
        transaction.on_commit(lambda: run_reshard_job.delay(job.pk), robust=True)
    return ReshardRequest(job, created=True)


# --- Running a job ----------------------------------------------------------------------------


def _fenced(job: ReshardJob) -> QuerySet[ReshardJob]:
    """Rows this attempt may still write: the job, running, claimed by this very attempt."""
    return ReshardJob.objects.filter(pk=job.pk, status=ReshardStatus.RUNNING, attempts=job.attempts)


class _Tracker:
    """Progress (from reshard's callback, at most once a second) and a heartbeat thread that keeps
    beating through the phases without a callback (download, verify, upload) while the process lives."""

    def __init__(self, job: ReshardJob) -> None:
        self.job = job
        self.stored_keys: list[str] = []
        self._last = float("-inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"reshard-{job.pk}-heartbeat", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _beat(self) -> None:
        try:
            while not self._stop.wait(_heartbeat_seconds()):
                try:
                    _fenced(self.job).update(heartbeat_at=timezone.now())
                except DatabaseError as error:  # a blip must not kill the conversion; the next beat retries
                    log.warning("reshard job %s: heartbeat failed: %s", self.job.pk, error)
        finally:
            connection.close()  # this thread's own connection

    def phase(self, name: str) -> None:
        if not _fenced(self.job).update(phase=name, heartbeat_at=timezone.now()):
            raise _Superseded
        self.job.phase = name

    def progress(self, bytes_done: int, bytes_total: int, tensors_done: int, tensors_total: int) -> None:
        now = time.monotonic()
        if tensors_done < tensors_total and now - self._last < PROGRESS_INTERVAL_SECONDS:
            return
        self._last = now
        if not _fenced(self.job).update(
            bytes_done=bytes_done,
            bytes_total=bytes_total,
            tensors_done=tensors_done,
            tensors_total=tensors_total,
            heartbeat_at=timezone.now(),
        ):
            raise _Superseded  # stop converting: another attempt owns the job


def reshard_job_run(*, job_id: int) -> ReshardJob | None:
    """Run the job if it is queued (or running with a stale heartbeat); otherwise do nothing.

    Raises RetryLater after a transient fault (the job is queued again); every other outcome is
    recorded on the row.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=stale_seconds())
    claimed = (
        ReshardJob.objects.filter(pk=job_id)
        .filter(
            Q(status=ReshardStatus.QUEUED)
            | Q(status=ReshardStatus.RUNNING, heartbeat_at__lt=stale, attempts__lt=max_attempts())
        )
        .update(
            status=ReshardStatus.RUNNING,
            started_at=now,
            heartbeat_at=now,
            attempts=F("attempts") + 1,
            error_message="",
            exit_code=None,
            phase="",
            bytes_done=0,
            tensors_done=0,
        )
    )
    job = ReshardJob.objects.select_related("source__release").filter(pk=job_id).first()
    if job is None or not claimed:
        return job
    import reshard

    work = work_root() / f"job-{job.pk}"
    tracker = _Tracker(job)
    try:
        with tracker:
            _run_claimed(job, work, tracker)
    except _Superseded:
        log.info(
            "reshard job %s: attempt %s lost its claim; leaving the job to the newer attempt", job.pk, job.attempts
        )
    except reshard.ReshardError as error:
        _fail(job, str(error), exit_code=error.exit_code, work=work, tracker=tracker)
    except _Permanent as error:
        _fail(job, str(error), exit_code=error.exit_code, work=work, tracker=tracker)
    except (OSError, StorageError) as error:
        message = f"attempt {job.attempts}: {type(error).__name__}: {error}"
        if job.attempts >= max_attempts():
            _fail(
                job,
                f"Gave up after {job.attempts} attempts; last fault: {message}",
                exit_code=1,
                work=work,
                tracker=tracker,
            )
        else:
            delay = retry_delay(job.attempts)
            _fenced(job).update(
                status=ReshardStatus.QUEUED,
                heartbeat_at=timezone.now(),
                phase="",
                error_message=f"Transient fault, retrying in {delay} s ({message}).",
            )
            job.refresh_from_db()
            raise RetryLater(message, seconds=delay) from error
    except Exception as error:
        # A bug or the soft time limit: record it, then let the worker log the traceback.
        _fail(job, f"{type(error).__name__}: {error}", exit_code=1, work=work, tracker=tracker)
        raise
    job.refresh_from_db()
    return job


def _fail(job: ReshardJob, message: str, *, exit_code: int, work: Path, tracker: _Tracker) -> None:
    now = timezone.now()
    if _fenced(job).update(
        status=ReshardStatus.FAILED,
        error_message=message,
        exit_code=exit_code,
        finished_at=now,
        heartbeat_at=now,
        phase="",
    ):
        audit_record(
            actor=None,
            action="checkpoint.reshard_fail",
            target=job.source,
            meta=SYSTEM,
            after={"job": job.pk, "exit_code": exit_code, "error": message[:2000]},
        )
        shutil.rmtree(work, ignore_errors=True)
        # Objects this attempt stored have no rows (nothing serves them); remove them anyway.
        storage = get_storage()
        for key in tracker.stored_keys:
            try:
                storage.delete(key)
            except (StorageError, OSError) as error:
                log.warning("reshard job %s: could not delete %s: %s", job.pk, key, error)
    job.refresh_from_db()


def _run_claimed(job: ReshardJob, work: Path, tracker: _Tracker) -> None:
    import reshard

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

    tracker.phase("materialising")
    # Named like download.sh's default target folder: reshard records the folder name as the model name
    # (config.json), so converting a download by hand gives these very bytes.
    src_dir = _materialise(rows, work / f"{source.release.slug}-{source.variant}")

    tracker.phase("converting")
    out_dir = work / "output"
    shutil.rmtree(out_dir, ignore_errors=True)  # a finished output of a crashed attempt: convert again (same bytes)
    result = reshard.convert(
        src_dir, out_dir, to=job.target_format, tp=job.tp_size, dtype=job.dtype, progress=tracker.progress
    )

    tracker.phase("verifying")
    source_bytes = sum(row.size for row in rows)
    numerics = source_bytes <= _numerics_max_bytes()
    verified = reshard.verify(out_dir, against=src_dir if numerics else None)

    tracker.phase("storing")
    storage = get_storage()
    prefix = f"checkpoints/{source.release.slug}/{variant}"
    stored: list[tuple[str, int, str, str]] = []  # path, size, sha256, md5
    for info in sorted(result.files, key=lambda f: f.path):
        key = f"{prefix}/{info.path}"
        tracker.stored_keys.append(key)
        with open(out_dir / info.path, "rb") as handle:
            reader = _HashingReader(handle)
            storage.write_stream(key, reader, size=info.size)  # type: ignore[arg-type]
        if reader.sha256.hexdigest() != info.sha256:
            raise OSError(
                f"{info.path} changed on the work disk while it was stored; its sha256 no longer matches "
                "the conversion's manifest"
            )
        stored.append((info.path, info.size, info.sha256, reader.md5.hexdigest()))
        _fenced(job).update(heartbeat_at=timezone.now())

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
            "numerics_skipped": None if numerics else f"source larger than {_numerics_max_bytes()} bytes",
        },
    }
    _publish(job, source, variant=variant, prefix=prefix, result=result, stored=stored, report=report)
    shutil.rmtree(work, ignore_errors=True)


def _publish(
    job: ReshardJob,
    source: Checkpoint,
    *,
    variant: str,
    prefix: str,
    result: Any,
    stored: list[tuple[str, int, str, str]],
    report: dict[str, Any],
) -> None:
    """The one moment the output becomes visible: checkpoint, files and the job's success commit together."""
    now = timezone.now()
    with transaction.atomic():
        if _fenced(job).select_for_update().first() is None:
            raise _Superseded
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
        CheckpointFile.objects.bulk_create(
            [
                CheckpointFile(
                    checkpoint=checkpoint,
                    path=path,
                    size=size,
                    sha256=sha256,
                    md5=md5,
                    expected_sha256=sha256,
                    expected_md5=md5,
                    expected_source=ChecksumSource.FIRST_VERIFICATION,
                    storage_key=f"{prefix}/{path}",
                    verified_at=now,
                )
                for path, size, sha256, md5 in stored
            ]
        )
        _fenced(job).update(
            status=ReshardStatus.SUCCEEDED,
            output=checkpoint,
            finished_at=now,
            heartbeat_at=now,
            phase="",
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


class _HashingReader:
    """Hashes the bytes as storage reads them, so what was stored is what the manifest lists."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.sha256.update(data)
        self.md5.update(data)
        return data


def _materialise(rows: list[CheckpointFile], folder: Path) -> Path:
    """The source checkpoint as a folder reshard can open: symlinks to the stored files (local storage)
    or downloads (S3; a complete download of the right size is kept for the next attempt)."""
    storage = get_storage()
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {row.path for row in rows}
    for path in sorted(folder.rglob("*"), reverse=True):
        relative = path.relative_to(folder).as_posix()
        if (path.is_symlink() or path.is_file()) and relative not in wanted:
            path.unlink()  # leftovers of earlier attempts (partial downloads, files since removed)
    for row in rows:
        target = folder / row.path
        target.parent.mkdir(parents=True, exist_ok=True)
        local = storage.local_path(row.storage_key)
        if local is not None:
            if target.is_symlink() or target.exists():
                target.unlink()
            if not local.is_file():
                raise OSError(f"{row.storage_key} is missing from local storage")
            target.symlink_to(local)
            continue
        if target.is_file() and not target.is_symlink() and target.stat().st_size == row.size:
            continue
        partial = target.with_name(f".{target.name}.part")
        stream = storage.open_read(row.storage_key)
        try:
            with open(partial, "wb") as out:
                while chunk := stream.read(_HASH_CHUNK):
                    out.write(chunk)
        finally:
            stream.close()
        if partial.stat().st_size != row.size:
            raise OSError(f"downloaded {partial.stat().st_size} bytes of {row.storage_key}, expected {row.size}")
        os.replace(partial, target)
    return folder


# --- Reaping ----------------------------------------------------------------------------------


def reshard_jobs_reap_stale(*, now: datetime | None = None, dispatch: bool = True) -> int:
    """Running jobs whose worker stopped beating: queue them again (the retry converts from scratch and
    gets the same bytes), or fail them once they used `ARTIFACTS_RESHARD_MAX_ATTEMPTS` attempts."""
    now = now or timezone.now()
    stale = ReshardJob.objects.filter(
        status=ReshardStatus.RUNNING, heartbeat_at__lt=now - timedelta(seconds=stale_seconds())
    )
    reaped = 0
    for job in stale:
        unchanged = ReshardJob.objects.filter(
            pk=job.pk, status=ReshardStatus.RUNNING, heartbeat_at=job.heartbeat_at, attempts=job.attempts
        )
        if job.attempts >= max_attempts():
            if unchanged.update(
                status=ReshardStatus.FAILED,
                finished_at=now,
                phase="",
                exit_code=1,
                error_message=f"The worker stopped sending heartbeats ({job.attempts} attempts); "
                "submit the conversion again.",
            ):
                shutil.rmtree(work_root() / f"job-{job.pk}", ignore_errors=True)
                reaped += 1
            continue
        if unchanged.update(
            status=ReshardStatus.QUEUED,
            phase="",
            dispatched_at=now,
            error_message=f"Attempt {job.attempts} stopped sending heartbeats; queued again.",
        ):
            reaped += 1
            if dispatch:
                from artifacts.tasks import run_reshard_job

                transaction.on_commit(lambda pk=job.pk: run_reshard_job.delay(pk), robust=True)
    if dispatch:
        from artifacts.services import redispatch_lost
        from artifacts.tasks import run_reshard_job

        reaped += redispatch_lost(ReshardJob.objects.all(), run_reshard_job, now=now)
    return reaped

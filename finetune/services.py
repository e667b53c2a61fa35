"""Writes of the fine-tuning app: upload a dataset, submit / cancel a job, and the operators' pause and
resume. Every check runs here, before anything is queued; errors name the field and say what to change.
`runs` runs the queued work."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from access.errors import AccessRefused, Conflict, InvalidInput, NotAllowed
from access.models import User
from access.selectors import is_reviewer, release_access_check
from access.services.audit import RequestMeta, audit_record
from artifacts.models import Checkpoint, CheckpointState
from artifacts.services.files import read_stored_text
from artifacts.storage import StorageError
from finetune import hyperparameters as hp
from finetune.models import DatasetFormat, TrainingDataset, TrainingJob
from finetune.selectors import gpu_hours_used
from jobs.models import ACTIVE_STATUSES, JobStatus
from jobs.services import job_cancel, job_dispatch

FORMATS_BY_SUFFIX = {
    ".jsonl": DatasetFormat.JSONL,
    ".ndjson": DatasetFormat.JSONL,
    ".json": DatasetFormat.JSONL,
    ".txt": DatasetFormat.TEXT,
    ".text": DatasetFormat.TEXT,
    ".md": DatasetFormat.TEXT,
}


class Upload(Protocol):
    """What Django's UploadedFile offers (and what tests and the demo pass)."""

    name: str | None
    size: int | None

    def chunks(self) -> Iterable[bytes]: ...


def _check_checkpoint(*, user: User, checkpoint: Checkpoint, field: str = "checkpoint") -> Any:
    """The checkpoint must be ready, visible to the user, and of a release the user may use now."""
    if checkpoint.state != CheckpointState.READY:
        raise InvalidInput(
            f"{checkpoint} is {checkpoint.get_state_display().lower()}; fine-tune a ready checkpoint.", field=field
        )
    if checkpoint.owner_id is not None and checkpoint.owner_id != user.pk:
        raise InvalidInput("No such checkpoint; pick one from the list.", field=field)
    decision = release_access_check(user=user, release=checkpoint.release)
    if not decision.allowed:
        raise AccessRefused(decision, release=checkpoint.release)
    return decision


# --- Datasets ---------------------------------------------------------------------------------


def dataset_upload(
    *,
    owner: User,
    checkpoint: Checkpoint,
    upload: Upload,
    name: str = "",
    meta: RequestMeta,
    dispatch: bool = True,
) -> TrainingDataset:
    """Store the file under FINETUNE_DIR and queue its check and tokenization (an `io` job) with the
    checkpoint's tokenizer."""
    _check_checkpoint(user=owner, checkpoint=checkpoint)
    filename = Path(upload.name or "dataset.jsonl").name
    input_format = FORMATS_BY_SUFFIX.get(Path(filename).suffix.lower())
    if input_format is None:
        raise InvalidInput(
            f'{filename}: upload a .jsonl file (one {{"text": ...}} object per line) or a .txt file '
            "(documents separated by blank lines).",
            field="file",
        )
    limit = settings.FINETUNE_DATASET_MAX_BYTES
    if upload.size is not None and upload.size > limit:
        raise InvalidInput(
            f"{filename} is {upload.size:,} bytes; the limit is {limit:,} bytes. Upload a smaller part.", field="file"
        )
    with transaction.atomic():
        dataset = TrainingDataset.objects.create(
            owner=owner,
            requested_by=owner,
            checkpoint=checkpoint,
            name=(name.strip() or filename)[:200],
            input_format=input_format,
        )
        folder = Path(settings.FINETUNE_DIR) / "datasets" / f"dataset-{dataset.pk}"
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / f"source{Path(filename).suffix.lower()}"
        digest, size = hashlib.sha256(), 0
        try:
            with open(source, "wb") as out:
                for chunk in upload.chunks():
                    size += len(chunk)
                    if size > limit:
                        raise InvalidInput(
                            f"{filename} is over the limit of {limit:,} bytes. Upload a smaller part.", field="file"
                        )
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if size == 0:
            shutil.rmtree(folder, ignore_errors=True)
            raise InvalidInput(f"{filename} is empty; upload a file with at least one document.", field="file")
        dataset.size_bytes = size
        dataset.sha256 = digest.hexdigest()
        dataset.source_path = source.relative_to(settings.FINETUNE_DIR).as_posix()
        dataset.save(update_fields=["size_bytes", "sha256", "source_path"])
        audit_record(
            actor=owner,
            action="finetune.dataset_upload",
            target=checkpoint,
            meta=meta,
            after={"dataset": dataset.pk, "bytes": size, "format": input_format},
        )
    if dispatch:
        job_dispatch(dataset)
    return dataset


# --- Jobs -------------------------------------------------------------------------------------


def _model_config(checkpoint: Checkpoint) -> dict[str, Any]:
    """The checkpoint's config.json (read from storage); {} when it has none or it cannot be read
    (the engine checks again before any work, and the job then fails naming the flag)."""
    row = checkpoint.files.filter(path="config.json").first()
    if row is None:
        return {}
    try:
        value = json.loads(read_stored_text(row.storage_key))
    except (StorageError, OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _first_int(config: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _check_resources(*, tp: Any, gpus: Any, max_hours: Any, config: dict[str, Any]) -> tuple[int, int, float]:
    def whole(name: str, value: Any) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise InvalidInput(f"{name}: enter a whole number.", field=name) from None
        if str(number) != str(value).strip() and not isinstance(value, int):
            raise InvalidInput(f"{name}: enter a whole number, not {value!r}.", field=name)
        return number

    gpus, tp = whole("gpus", gpus), whole("tp", tp)
    if not 1 <= gpus <= settings.FINETUNE_MAX_GPUS:
        raise InvalidInput(f"gpus: choose 1 to {settings.FINETUNE_MAX_GPUS} (FINETUNE_MAX_GPUS).", field="gpus")
    if tp < 1 or gpus % tp:
        raise InvalidInput(f"tp: must divide gpus ({gpus}); dp = gpus / tp.", field="tp")
    heads = _first_int(config, "num_attention_heads", "n_head")
    if heads is not None and heads % tp:
        raise InvalidInput(f"tp: the model has {heads} attention heads; choose a tp that divides {heads}.", field="tp")
    try:
        hours = float(max_hours)
    except (TypeError, ValueError):
        raise InvalidInput("max_hours: enter a number of hours.", field="max_hours") from None
    limit = settings.FINETUNE_MAX_HOURS_PER_JOB
    if not 0 < hours <= limit:
        raise InvalidInput(f"max_hours: choose more than 0 and at most {limit} hours.", field="max_hours")
    return tp, gpus, hours


def training_job_submit(
    *,
    owner: User,
    checkpoint: Checkpoint,
    dataset: TrainingDataset,
    hyperparameters: dict[str, Any] | None = None,
    tp: Any = 1,
    gpus: Any = 1,
    max_hours: Any = None,
    meta: RequestMeta,
    dispatch: bool = True,
) -> TrainingJob:
    """Queue a fine-tuning job of `checkpoint` on `dataset`. The owner must be allowed to use the release
    now (an active grant for a gated release); the job's GPU-hours must fit the owner's cap."""
    decision = _check_checkpoint(user=owner, checkpoint=checkpoint)
    if dataset.owner_id != owner.pk:
        raise InvalidInput("No such dataset; upload one first.", field="dataset")
    if not dataset.is_ready:
        raise InvalidInput(
            f"{dataset.name} is {dataset.state_label}; wait until it is ready, or upload a corrected file.",
            field="dataset",
        )
    if dataset.checkpoint.release_id != checkpoint.release_id:
        raise InvalidInput(
            f"{dataset.name} was tokenized for {dataset.checkpoint.release.name}; upload it again for "
            f"{checkpoint.release.name}.",
            field="dataset",
        )
    config = _model_config(checkpoint)
    tp, gpus, hours = _check_resources(
        tp=tp,
        gpus=gpus,
        max_hours=settings.FINETUNE_MAX_HOURS_PER_JOB if max_hours in (None, "") else max_hours,
        config=config,
    )
    context = _first_int(config, "max_position_embeddings", "n_positions", "max_seq_len")
    cleaned = hp.clean(hyperparameters, dp=gpus // tp, context=context)
    cap = float(settings.FINETUNE_GPU_HOURS_PER_USER)
    with transaction.atomic():
        User.objects.select_for_update().filter(pk=owner.pk).first()  # one submit at a time per user
        used = gpu_hours_used(user=owner)
        if used + gpus * hours > cap:
            raise InvalidInput(
                f"max_hours: {gpus} GPU(s) x {hours:g} h = {gpus * hours:g} GPU-hours, but you have "
                f"{max(cap - used, 0):g} of your {cap:g} left (queued and running jobs count their whole "
                "limit). Lower gpus or max_hours, or wait for a job to end.",
                field="max_hours",
            )
        job = TrainingJob.objects.create(
            owner=owner,
            requested_by=owner,
            base_checkpoint=checkpoint,
            release=checkpoint.release,
            grant=decision.grant,
            dataset=dataset,
            hyperparameters=cleaned,
            tp=tp,
            gpus=gpus,
            max_hours=hours,
            total_steps=cleaned["steps"],
        )
        audit_record(
            actor=owner,
            action="finetune.job_submit",
            target=checkpoint,
            meta=meta,
            after={"job": job.pk, "dataset": dataset.pk, "tp": tp, "gpus": gpus, "hyperparameters": cleaned},
        )
    if dispatch:
        job_dispatch(job)
    return job


def training_job_cancel(*, job: TrainingJob, actor: User, meta: RequestMeta, reason: str = "") -> TrainingJob:
    """The owner or an operator: a queued job is cancelled at once, a running one at its next heartbeat."""
    if job.owner_id != actor.pk and not is_reviewer(actor):
        raise NotAllowed("Only the job's owner or an operator can cancel it.")
    message = f"Cancelled by {actor.email}" + (f": {reason.strip()}" if reason.strip() else ".")
    job = job_cancel(job=job, message=message)
    audit_record(
        actor=actor, action="finetune.job_cancel", target=job.base_checkpoint, meta=meta, after={"job": job.pk}
    )
    return job


def _logbook_note(job: TrainingJob, **fields: Any) -> None:
    """An operator's action, in the run's own logbook (the single record of the run)."""
    from training.logbook import Logbook

    book = Logbook(job.run_dir())
    try:
        book.write("operator", **fields)
    finally:
        book.close()


def training_job_pause(*, job: TrainingJob, actor: User, reason: str, meta: RequestMeta) -> TrainingJob:
    """Operators: stop the job and keep its committed checkpoints, so it can be resumed later."""
    if not is_reviewer(actor):
        raise NotAllowed("Only operators can pause a training job.")
    if not reason.strip():
        raise InvalidInput("Say why the job is paused; the owner sees it.", field="reason")
    if job.status not in ACTIVE_STATUSES:
        raise Conflict(f"{job} is {job.get_status_display().lower()}; only queued or running jobs can be paused.")
    TrainingJob.objects.filter(pk=job.pk).update(paused=True)
    job = job_cancel(job=job, message=f"Paused by {actor.email}: {reason.strip()}")
    _logbook_note(job, action="pause", by=actor.email, reason=reason.strip(), step=job.step)
    audit_record(actor=actor, action="finetune.job_pause", target=job.base_checkpoint, meta=meta, after={"job": job.pk})
    return job


def committed_steps(job: TrainingJob) -> list[int]:
    """The steps the job's run directory holds committed checkpoints of (loads torch: the engine's own reader)."""
    from training.checkpoint import committed_checkpoints

    return [c.step for c in committed_checkpoints(job.run_dir())]


def training_job_resume(
    *,
    job: TrainingJob,
    actor: User,
    from_step: Any,
    lr: Any = None,
    reason: str,
    meta: RequestMeta,
    dispatch: bool = True,
) -> TrainingJob:
    """Operators: queue a paused, cancelled or failed job again from a committed step, optionally with a new
    peak learning rate. Checkpoints after that step are discarded by the engine (`--resume-from`); the
    action, who and why, goes into the run's logbook."""
    if not is_reviewer(actor):
        raise NotAllowed("Only operators can resume a training job.")
    if not reason.strip():
        raise InvalidInput("Say why the job is resumed (it is recorded in the logbook).", field="reason")
    if job.status not in (JobStatus.CANCELLED, JobStatus.FAILED):
        raise Conflict(f"{job} is {job.get_status_display().lower()}; resume paused, cancelled or failed jobs.")
    steps = committed_steps(job)
    try:
        step = int(from_step)
    except (TypeError, ValueError):
        raise InvalidInput(f"from_step: choose one of the committed steps {steps}.", field="from_step") from None
    if step not in steps:
        raise InvalidInput(
            f"from_step: no committed checkpoint at step {step}; choose one of {steps}.", field="from_step"
        )
    settings_now = dict(job.hyperparameters)
    if lr not in (None, ""):
        settings_now["lr"] = hp.clean({**settings_now, "lr": lr}, dp=job.gpus // job.tp, context=None)["lr"]
    decision = release_access_check(user=job.owner, release=job.release)
    if not decision.allowed:
        raise NotAllowed(f"The owner may not use {job.release.name} now ({decision.message}); the job cannot run.")
    now = timezone.now()
    with transaction.atomic():
        changed = TrainingJob.objects.filter(pk=job.pk, status__in=[JobStatus.CANCELLED, JobStatus.FAILED]).update(
            status=JobStatus.QUEUED,
            cancel_requested_at=None,
            finished_at=None,
            dispatched_at=now,
            paused=False,
            resume_from_step=step,
            hyperparameters=settings_now,
            error_message="",
            exit_code=None,
            phase="",
        )
        if not changed:
            raise Conflict(f"{job} changed meanwhile; reload and try again.")
        job.refresh_from_db()
        audit_record(
            actor=actor,
            action="finetune.job_resume",
            target=job.base_checkpoint,
            meta=meta,
            after={"job": job.pk, "from_step": step, "lr": settings_now["lr"], "reason": reason.strip()},
        )
    _logbook_note(job, action="resume", by=actor.email, reason=reason.strip(), from_step=step, lr=settings_now["lr"])
    if dispatch:
        job_dispatch(job)
    return job

"""Asking for a reshard job: convert a ready checkpoint into another format, tensor-parallel layout or
dtype. The options are checked here, before anything is queued; `reshard_run` runs the job."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.db import IntegrityError, transaction

from access.errors import Conflict, InvalidInput, NotAllowed
from access.models import User
from access.selectors import is_reviewer
from access.services.audit import RequestMeta, audit_record
from artifacts.models import Checkpoint, CheckpointState, ReshardJob
from artifacts.services.files import read_stored_text
from artifacts.storage import StorageError
from jobs.models import JobStatus
from jobs.services import job_cancel, job_dispatch

if TYPE_CHECKING:
    import reshard


def output_variant(source: Checkpoint, *, to: str, tp: int, dtype: str) -> str:
    from training.hf import SHORT_DTYPE_NAMES, parse_dtype

    return f"{source.variant}-{to}-tp{tp}-{SHORT_DTYPE_NAMES[parse_dtype(dtype)]}"


def job_key(source: Checkpoint, *, to: str, tp: int, dtype: str) -> str:
    return f"checkpoint:{source.pk}:{to}:tp{tp}:{dtype}"


@dataclass(frozen=True)
class ReshardRequest:
    job: ReshardJob
    created: bool


def _checked_options(checkpoint: Checkpoint, *, to: str, tp: int | None, dtype: str | None) -> reshard.Options:
    """The conversion reshard would do, checked by reshard against what the stored checkpoint is
    (its files and config.json, read from storage); the error names the option to change."""
    import reshard  # loads torch: only the processes that convert checkpoints pay for it

    rows = {row.path: row.storage_key for row in checkpoint.files.all()}

    def read_text(path: str) -> str:
        return read_stored_text(rows[path])

    try:
        detected = reshard.detect_files(sorted(rows), read_text, where=str(checkpoint))
        config = reshard.architecture(detected, where=str(checkpoint))
        return reshard.check_options(
            to=to,
            tp=tp,
            dtype=dtype,
            source_tp=detected.tp_size,
            source_dtype=checkpoint.dtype or detected.dtype,
            config=config,
            family=detected.family,
        )
    except reshard.OptionError as error:
        raise InvalidInput(str(error), field=error.option) from None
    except reshard.ReshardError as error:
        raise InvalidInput(f"{checkpoint} cannot be converted: {error}.", field="checkpoint") from None
    except (StorageError, OSError) as error:
        raise InvalidInput(
            f"Could not read config.json of {checkpoint}: {error}. Try again.", field="checkpoint"
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
    if not is_reviewer(actor):
        raise NotAllowed("Only operators and reviewers can start a conversion.")
    if checkpoint.state != CheckpointState.READY:
        raise InvalidInput(
            f"{checkpoint} is {checkpoint.get_state_display().lower()}; conversions start from ready checkpoints "
            "(verify it first).",
            field="checkpoint",
        )
    options = _checked_options(checkpoint, to=to, tp=tp, dtype=dtype)
    tp, dtype = options.tp_size, options.dtype_name

    key = job_key(checkpoint, to=to, tp=tp, dtype=dtype)
    existing = _live_job(key)
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
        existing = _live_job(key)
        if existing is None:
            raise
        return ReshardRequest(existing, created=False)
    if dispatch:
        job_dispatch(job)
    return ReshardRequest(job, created=True)


def _live_job(key: str) -> ReshardJob | None:
    """The queued, running or finished job of this conversion (failed and cancelled ones may be asked again)."""
    return ReshardJob.objects.filter(job_key=key).exclude(status__in=[JobStatus.FAILED, JobStatus.CANCELLED]).first()


def reshard_job_cancel(*, job: ReshardJob, actor: User, meta: RequestMeta) -> ReshardJob:
    """Cancel a queued job at once, or ask a running one to stop (it stops at its next heartbeat and
    removes what it stored)."""
    if not is_reviewer(actor):
        raise NotAllowed("Only operators and reviewers can cancel a conversion.")
    job = job_cancel(job=job, message=f"Cancelled by {actor.email}.")
    audit_record(
        actor=actor,
        action="checkpoint.reshard_cancel_request",
        target=job.source,
        meta=meta,
        after={"job": job.pk, "status": job.status},
    )
    return job

"""Celery tasks of the artifacts app: thin wrappers that take ids; state lives in job rows
(VerificationJob, ReshardJob), not in a result backend."""

from __future__ import annotations

from celery import Task, shared_task
from django.conf import settings

from artifacts import reshard_jobs, services

RESHARD_SOFT_TIME_LIMIT = getattr(settings, "ARTIFACTS_RESHARD_SOFT_TIME_LIMIT", 12 * 3600)


@shared_task(
    name="artifacts.tasks.verify_checkpoint",  # routed to the `io` queue (CELERY_TASK_ROUTES)
    acks_late=True,
    soft_time_limit=settings.ARTIFACTS_VERIFY_SOFT_TIME_LIMIT,
    time_limit=settings.ARTIFACTS_VERIFY_SOFT_TIME_LIMIT + 300,
)
def verify_checkpoint(job_id: int) -> None:
    """Idempotent: the service claims the job with a conditional UPDATE; a finished job is left alone."""
    services.verification_run(job_id=job_id)


@shared_task(
    bind=True,
    name="artifacts.tasks.run_reshard_job",  # routed to the `gpu` queue (CELERY_TASK_ROUTES)
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=RESHARD_SOFT_TIME_LIMIT,
    time_limit=RESHARD_SOFT_TIME_LIMIT + 600,
    max_retries=None,  # the job row counts attempts (ARTIFACTS_RESHARD_MAX_ATTEMPTS)
)
def run_reshard_job(self: Task, job_id: int) -> None:
    """Idempotent: a duplicate delivery or a finished job is a no-op; transient faults retry with backoff."""
    try:
        reshard_jobs.reshard_job_run(job_id=job_id)
    except reshard_jobs.RetryLater as delay:
        raise self.retry(countdown=delay.seconds, exc=delay) from None


@shared_task(name="artifacts.tasks.reap_stale_verifications", acks_late=True, soft_time_limit=60, time_limit=90)
def reap_stale_verifications() -> int:
    """The artifacts reaper (one beat entry): stale verification jobs fail, stale reshard jobs are
    queued again or, out of attempts, fail."""
    return services.verifications_reap_stale() + reshard_jobs.reshard_jobs_reap_stale()

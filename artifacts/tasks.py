"""Celery tasks of the artifacts app: thin wrappers that take ids; state lives in job rows
(VerificationJob, ReshardJob; see the `jobs` app), not in a result backend. The reaper of both is
`jobs.tasks.reap_jobs`."""

from __future__ import annotations

from celery import Task, shared_task
from django.conf import settings

from artifacts.services import reshard_run, verification
from jobs.services import RetryLater


@shared_task(
    name="artifacts.tasks.verify_checkpoint",  # routed to the `io` queue (CELERY_TASK_ROUTES)
    acks_late=True,
    soft_time_limit=settings.ARTIFACTS_VERIFY_SOFT_TIME_LIMIT,
    time_limit=settings.ARTIFACTS_VERIFY_TIME_LIMIT,
)
def verify_checkpoint(job_id: int) -> None:
    """Idempotent: the service claims the job with a conditional UPDATE; a finished job is left alone."""
    verification.verification_run(job_id=job_id)


@shared_task(
    bind=True,
    name="artifacts.tasks.run_reshard_job",  # routed to the `gpu` queue (CELERY_TASK_ROUTES)
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.ARTIFACTS_RESHARD_SOFT_TIME_LIMIT,
    time_limit=settings.ARTIFACTS_RESHARD_TIME_LIMIT,
    max_retries=None,  # the job row counts attempts (ARTIFACTS_RESHARD_MAX_ATTEMPTS)
)
def run_reshard_job(self: Task, job_id: int) -> None:
    """Idempotent: a duplicate delivery or a finished job is a no-op; transient faults retry with backoff."""
    try:
        reshard_run.reshard_job_run(job_id=job_id)
    except RetryLater as delay:
        raise self.retry(countdown=delay.seconds, exc=delay) from None

"""Celery tasks of the artifacts app: thin wrappers that take ids; state lives in VerificationJob rows."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from artifacts import services


@shared_task(
    name="artifacts.tasks.verify_checkpoint",  # routed to the `io` queue (CELERY_TASK_ROUTES)
    acks_late=True,
    soft_time_limit=settings.ARTIFACTS_VERIFY_SOFT_TIME_LIMIT,
    time_limit=settings.ARTIFACTS_VERIFY_SOFT_TIME_LIMIT + 300,
)
def verify_checkpoint(job_id: int) -> None:
    """Idempotent: the service claims the job with a conditional UPDATE; a finished job is left alone."""
    services.verification_run(job_id=job_id)


@shared_task(name="artifacts.tasks.reap_stale_verifications", acks_late=True,
             soft_time_limit=60, time_limit=90)
def reap_stale_verifications() -> int:
    return services.verifications_reap_stale()

"""The one periodic reaper for every job kind (Celery beat: `jobs-reap`)."""

from __future__ import annotations

from celery import shared_task

from jobs.services import jobs_reap


@shared_task(name="jobs.tasks.reap_jobs", acks_late=True, soft_time_limit=60, time_limit=90)
def reap_jobs() -> int:
    """Stale running jobs are queued again (with backoff) or, out of attempts, failed; queued jobs whose
    message was lost are sent again. Returns how many jobs it acted on."""
    return jobs_reap()

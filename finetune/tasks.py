"""Celery tasks of the fine-tuning app: thin wrappers that take ids; state lives in the job rows
(TrainingDataset, TrainingJob). The reaper of both is `jobs.tasks.reap_jobs`."""

from __future__ import annotations

from celery import Task, shared_task
from django.conf import settings

from finetune import runs
from jobs.services import RetryLater


@shared_task(
    name="finetune.tasks.tokenize_dataset",  # routed to the `io` queue (CELERY_TASK_ROUTES)
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.FINETUNE_TOKENIZE_SOFT_TIME_LIMIT,
    time_limit=settings.FINETUNE_TOKENIZE_TIME_LIMIT,
)
def tokenize_dataset(job_id: int) -> None:
    """Idempotent: the run claims the dataset row with a conditional UPDATE; a finished one is left alone."""
    runs.dataset_tokenize_run(job_id=job_id)


@shared_task(
    bind=True,
    name="finetune.tasks.run_training_job",  # routed to the `gpu` queue (CELERY_TASK_ROUTES)
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=settings.FINETUNE_TRAIN_SOFT_TIME_LIMIT,
    time_limit=settings.FINETUNE_TRAIN_TIME_LIMIT,
    max_retries=None,  # the job row counts attempts (FINETUNE_MAX_ATTEMPTS)
)
def run_training_job(self: Task, job_id: int) -> None:
    """Idempotent: a duplicate delivery or a finished job is a no-op; an attempt after a worker loss or a
    transient fault continues from the run's last committed checkpoint."""
    try:
        runs.training_job_run(job_id=job_id)
    except RetryLater as delay:
        raise self.retry(countdown=delay.seconds, exc=delay) from None

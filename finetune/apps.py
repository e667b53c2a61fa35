from __future__ import annotations

from django.apps import AppConfig


class FinetuneConfig(AppConfig):
    name = "finetune"
    verbose_name = "Fine-tuning jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from finetune.runs import DATASET_JOBS, TRAINING_JOBS
        from jobs.kinds import register

        register(DATASET_JOBS)
        register(TRAINING_JOBS)

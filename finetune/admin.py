"""Read-only admin: fine-tuning rows change through the services and the job runs, not by hand (operators
pause, resume and cancel on /finetune/operator/)."""

from __future__ import annotations

from django.contrib import admin

from artifacts.admin import ReadOnlyAdmin
from finetune.models import TrainingDataset, TrainingJob


@admin.register(TrainingDataset)
class TrainingDatasetAdmin(ReadOnlyAdmin):
    list_display = ("id", "name", "owner", "checkpoint", "status", "doc_count", "token_count", "created_at")
    list_filter = ("status",)
    search_fields = ("name", "owner__email")


@admin.register(TrainingJob)
class TrainingJobAdmin(ReadOnlyAdmin):
    list_display = ("id", "owner", "base_checkpoint", "status", "step", "total_steps", "gpus", "attempts", "created_at")
    list_filter = ("status", "paused")
    search_fields = ("owner__email",)

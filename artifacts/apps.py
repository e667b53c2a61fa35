from __future__ import annotations

from django.apps import AppConfig


class ArtifactsConfig(AppConfig):
    name = "artifacts"
    verbose_name = "Artifacts: checkpoints, storage and downloads"
    default_auto_field = "django.db.models.BigAutoField"

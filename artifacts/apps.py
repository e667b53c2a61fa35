from __future__ import annotations

from django.apps import AppConfig


class ArtifactsConfig(AppConfig):
    name = "artifacts"
    verbose_name = "Artifacts: checkpoints, storage and downloads"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from artifacts.services.reshard_run import RESHARD_JOBS
        from artifacts.services.verification import VERIFICATION_JOBS
        from jobs.kinds import register

        register(VERIFICATION_JOBS)
        register(RESHARD_JOBS)

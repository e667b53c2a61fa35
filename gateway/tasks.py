"""Celery beat: the periodic health check of every engine replica (`gateway-health-check`).

A beat task, not a `jobs` job (see gateway.services.deployments): each run is seconds long, idempotent,
and its only state is the replica rows it overwrites.
"""

from __future__ import annotations

from celery import shared_task

from gateway.services.deployments import deployments_check_health


@shared_task(
    name="gateway.tasks.check_deployments", acks_late=True, soft_time_limit=120, time_limit=150, ignore_result=True
)
def check_deployments() -> dict[str, int]:
    """Probe every replica (GET /health, then /v1/models); returns how many are in each status."""
    return deployments_check_health()

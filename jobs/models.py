"""The abstract row of every long job. Concrete kinds (e.g. `artifacts.VerificationJob`) add what they
work on and their own progress columns, and register themselves in `jobs.kinds`."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class JobStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class Job(models.Model):
    """What every background job row carries: who asked, the attempt number (the fencing token every
    write of a running attempt carries), and the timestamps the claim, the heartbeat and the reaper
    work from."""

    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=10, choices=JobStatus.choices, default=JobStatus.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # When the task message was last sent: a queued job whose message a broker lost is sent again.
    dispatched_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Set by `job_cancel` on a running job; the running attempt notices at its next heartbeat.
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # What the running attempt is doing now, in the kind's words (e.g. "converting").
    phase = models.CharField(max_length=32, blank=True)
    # Kind-specific figures for pages (e.g. training's step, loss, tokens/s); counters that pages sort
    # or sum live in the kind's own columns.
    progress = models.JSONField(default=dict, blank=True)
    # Why the job failed, was cancelled or is being retried; empty otherwise.
    error_message = models.TextField(blank=True)

    class Meta:
        abstract = True
        ordering = ["-created_at", "-pk"]

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def cancel_requested(self) -> bool:
        return self.cancel_requested_at is not None

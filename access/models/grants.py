from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class GrantStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    REVOKED = "revoked", "Revoked"


class Grant(models.Model):
    """Permission for one user to use one gated release between two instants.

    "Expired" is derived from `expires_at`, never stored, so no job has to run for a grant to end.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="grants")
    release = models.ForeignKey("access.Release", on_delete=models.PROTECT, related_name="grants")
    application = models.ForeignKey(
        "access.Application", on_delete=models.PROTECT, related_name="grants", null=True, blank=True
    )
    status = models.CharField(max_length=8, choices=GrantStatus.choices, default=GrantStatus.ACTIVE)
    starts_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    revoke_reason = models.TextField(blank=True)
    expiry_reminder_sent_at = models.DateTimeField(null=True, blank=True)
    # An expired grant stays "active" (expiry is derived); when a later approval issues a new grant for
    # the same user and release, the old one is kept as history and marked superseded.
    superseded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-starts_at", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["user", "release"],
                condition=Q(status="active", superseded_at__isnull=True),
                name="one_current_grant_per_user_release",
            ),
            models.CheckConstraint(condition=Q(expires_at__gt=models.F("starts_at")), name="grant_expires_after_start"),
        ]

    def __str__(self) -> str:
        return f"{self.user} → {self.release} ({self.display_status})"

    def is_current(self, now=None) -> bool:
        now = now or timezone.now()
        return self.status == GrantStatus.ACTIVE and self.starts_at <= now < self.expires_at

    @property
    def display_status(self) -> str:
        if self.status == GrantStatus.REVOKED:
            return "revoked"
        return "active" if self.expires_at > timezone.now() else "expired"

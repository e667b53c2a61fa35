"""Rows of the gateway: which engines serve which release, per-grant limits, and one usage row per request."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class ReplicaStatus(models.TextChoices):
    UNKNOWN = "unknown", "Not checked yet"
    LOADING = "loading", "Loading (health 503)"
    HEALTHY = "healthy", "Healthy"
    FAILING = "failing", "Failing"


# Replicas the gateway sends requests to. An unknown one (just added) is tried, so a fresh deployment
# works before the first health check; a failing or loading one is skipped.
SERVABLE_REPLICA_STATUSES = (ReplicaStatus.HEALTHY, ReplicaStatus.UNKNOWN)


# A private checkpoint (a fine-tuning result, `Checkpoint.owner` set) is served under a model id of its
# own, `<release-slug>:<variant>` (e.g. `opt-175b:ft-12`), to its owner only; a release's public
# checkpoints are served under the release's slug. Slugs hold no colon, so the two never collide.
PRIVATE_MODEL_SEPARATOR = ":"


def private_model_id(*, release_slug: str, variant: str) -> str:
    return f"{release_slug}{PRIVATE_MODEL_SEPARATOR}{variant}"


class Deployment(models.Model):
    """One engine deployment: a checkpoint of a release served by one or more identical replicas.

    The engine secret is never stored: `secret_file` names a file on the portal host holding it (the
    same file the engines are started with, `--secret-file`). A removed deployment keeps its row, so
    usage rows still say what served them.
    """

    release = models.ForeignKey("access.Release", on_delete=models.PROTECT, related_name="deployments")
    checkpoint = models.ForeignKey("artifacts.Checkpoint", on_delete=models.PROTECT, related_name="deployments")
    secret_file = models.CharField(max_length=500, help_text="Path of the file holding the engine secret.")
    tp_size = models.PositiveIntegerField(default=1, help_text="Tensor-parallel ranks of each replica.")
    max_context = models.PositiveIntegerField(
        null=True, blank=True, help_text="Tokens of context the engine accepts; learned from its /v1/models."
    )
    # The model id the engine answers to (its --served-model-name); learned from /v1/models.
    engine_model = models.CharField(max_length=200, blank=True)
    draining = models.BooleanField(default=False, help_text="Takes no new requests; running ones finish.")
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    removed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["release__slug", "pk"]

    def __str__(self) -> str:
        return f"deployment #{self.pk} {self.release.slug} ({self.checkpoint.variant})"

    @property
    def is_removed(self) -> bool:
        return self.removed_at is not None

    @property
    def is_private(self) -> bool:
        """Serves a private checkpoint: to its owner only, under `model_id`."""
        return self.checkpoint.owner_id is not None

    @property
    def model_id(self) -> str:
        """The `model` callers name: the release's slug, or `<release-slug>:<variant>` when private."""
        if self.is_private:
            return private_model_id(release_slug=self.release.slug, variant=self.checkpoint.variant)
        return self.release.slug


class Replica(models.Model):
    """One engine process group (rank 0's HTTP address) of a deployment, with its last health check."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replicas")
    url = models.CharField(max_length=500, help_text="Base URL, e.g. http://10.0.0.5:9000")
    status = models.CharField(max_length=8, choices=ReplicaStatus.choices, default=ReplicaStatus.UNKNOWN)
    checked_at = models.DateTimeField(null=True, blank=True)
    healthy_at = models.DateTimeField(null=True, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["deployment", "pk"]
        constraints = [models.UniqueConstraint(fields=["deployment", "url"], name="uniq_replica_url")]

    def __str__(self) -> str:
        return f"{self.url} ({self.status})"


class GrantLimits(models.Model):
    """An operator's override of the default quotas for one grant; an empty field keeps the default."""

    grant = models.OneToOneField("access.Grant", on_delete=models.CASCADE, related_name="gateway_limits")
    tokens_per_day = models.PositiveBigIntegerField(null=True, blank=True)
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    max_concurrent = models.PositiveIntegerField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    def __str__(self) -> str:
        return f"limits of grant #{self.grant_id}"


class UsageStatus(models.TextChoices):
    OK = "ok", "Completed"
    REFUSED = "refused", "Refused by the gateway"  # no access, unknown model, quota, bad input
    ENGINE_ERROR = "engine_error", "Refused or failed by the engine"
    UNAVAILABLE = "unavailable", "No engine available"
    CLIENT_CLOSED = "client_closed", "Client went away"
    CUT = "cut", "Stopped: access ended mid-request"


class UsageRecord(models.Model):
    """One API request of a signed-in caller (API key or session), whatever its outcome."""

    created_at = models.DateTimeField(help_text="When the request arrived.")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="usage_records")
    api_key = models.ForeignKey(
        "access.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="usage_records"
    )
    release = models.ForeignKey(
        "access.Release", null=True, blank=True, on_delete=models.PROTECT, related_name="usage_records"
    )
    # The `model` the caller named (kept for unknown models, where `release` is empty).
    model = models.CharField(max_length=200, blank=True)
    deployment = models.ForeignKey(
        Deployment, null=True, blank=True, on_delete=models.PROTECT, related_name="usage_records"
    )
    replica = models.ForeignKey(Replica, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    endpoint = models.CharField(max_length=32, default="completions")
    stream = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=UsageStatus.choices)
    http_status = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    # False when the engine never reported usage (a dropped connection) and the gateway counted itself:
    # prompt tokens from the engine's /tokenize, completion tokens from the chunks it passed on.
    usage_exact = models.BooleanField(default=True)
    latency_ms = models.PositiveIntegerField(default=0)
    first_token_ms = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [
            # Tokens used today (every request's quota check) and a user's usage page.
            models.Index(fields=["user", "release", "created_at"], name="usage_user_release_time"),
            models.Index(fields=["created_at"], name="usage_time"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(release__isnull=False) | ~Q(status="ok"), name="usage_ok_has_release")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.model} {self.status} {self.prompt_tokens}+{self.completion_tokens}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

"""Reads of the gateway.

Guarded rows have one door each:
- `completion_admission`: may this caller send this `model` a completion now? (release, access, quota
  of tokens today, the replicas that may serve it), raising the API's error otherwise;
- `access_recheck`: the same access question again, for a request already running;
- `access_deployment`: a deployment, for operators (404 for anyone else);
- `access_limits_grant`: a grant whose limits an operator edits.

Model ids: a release's public checkpoints are served under the release's slug, to everyone the
release allows; a private checkpoint (a fine-tuning result) under `<release-slug>:<variant>`
(`gateway.models.private_model_id`), to its owner only, while the owner may use the release. Anyone
else gets 404 for it, as for a model that does not exist. Both share the release's quotas.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Prefetch, Q, QuerySet, Sum
from django.db.models.functions import TruncDate
from django.http import Http404
from django.utils import timezone

from access.models import ApiKey, Grant, Release, User
from access.selectors import is_reviewer, release_access_check
from artifacts.models import Checkpoint
from gateway import errors
from gateway.models import (
    PRIVATE_MODEL_SEPARATOR,
    SERVABLE_REPLICA_STATUSES,
    Deployment,
    GrantLimits,
    Replica,
    UsageRecord,
    private_model_id,
)

# --- Who may do what ---------------------------------------------------------------------------


def is_operator(user: Any) -> bool:
    """Sees deployments and usage, edits per-grant limits, drains: the reviewers (as for checkpoints)."""
    return is_reviewer(user)


def can_manage_deployments(user: Any, action: str = "add") -> bool:
    """Adding or removing an engine names a URL the portal connects to and a file it reads and sends
    there: superusers, or accounts given the model permission in the admin."""
    return bool(user and user.is_authenticated and user.is_active and user.has_perm(f"gateway.{action}_deployment"))


# --- Deployments ------------------------------------------------------------------------------


def operator_deployments(*, include_removed: bool = False) -> QuerySet[Deployment]:
    queryset = Deployment.objects.select_related("release", "checkpoint__owner").prefetch_related(
        Prefetch("replicas", queryset=Replica.objects.order_by("pk"))
    )
    if not include_removed:
        queryset = queryset.filter(removed_at__isnull=True)
    return queryset.order_by("release__slug", "pk")


def access_deployment(*, actor: Any, deployment_id: Any) -> Deployment:
    if not is_operator(actor):
        raise Http404("No such deployment.")
    try:
        return operator_deployments(include_removed=True).get(pk=int(deployment_id))
    except (Deployment.DoesNotExist, ValueError, TypeError, OverflowError):
        raise Http404("No such deployment.") from None


def deployment_status(deployment: Deployment) -> str:
    """One word for a deployment: removed, draining, healthy (a replica is), loading, unknown or failing."""
    if deployment.is_removed:
        return "removed"
    if deployment.draining:
        return "draining"
    statuses = {replica.status for replica in deployment.replicas.all()}
    for status in ("healthy", "loading", "unknown"):
        if status in statuses:
            return status
    return "failing"


@dataclass(frozen=True)
class ReplicaTarget:
    """What the proxy needs to send one request to one replica."""

    replica_id: int
    deployment_id: int
    url: str
    secret_file: str
    engine_model: str
    max_context: int | None


def serving_targets(release: Release, *, checkpoint: Checkpoint | None = None) -> list[ReplicaTarget]:
    """Replicas that may take a new request for `release`'s public model (`checkpoint` None) or for the
    private `checkpoint`: not removed, not draining, not failing."""
    replicas = Replica.objects.filter(
        deployment__release=release,
        deployment__removed_at__isnull=True,
        deployment__draining=False,
        status__in=SERVABLE_REPLICA_STATUSES,
    ).select_related("deployment")
    if checkpoint is None:
        replicas = replicas.filter(deployment__checkpoint__owner__isnull=True)
    else:
        replicas = replicas.filter(deployment__checkpoint=checkpoint)
    return [
        ReplicaTarget(
            replica_id=replica.pk,
            deployment_id=replica.deployment_id,
            url=replica.url.rstrip("/"),
            secret_file=replica.deployment.secret_file,
            engine_model=replica.deployment.engine_model,
            max_context=replica.deployment.max_context,
        )
        for replica in replicas.order_by("pk")
    ]


def served_releases() -> QuerySet[Release]:
    """Listed releases with at least one deployment of a public checkpoint that takes requests."""
    return (
        Release.objects.filter(
            is_listed=True,
            deployments__removed_at__isnull=True,
            deployments__draining=False,
            deployments__checkpoint__owner__isnull=True,
        )
        .select_related("license", "family")
        .distinct()
        .order_by("family__name", "sort_order", "pk")
    )


def served_private_checkpoints(*, owner: Any) -> QuerySet[Checkpoint]:
    """`owner`'s private checkpoints of listed releases with a deployment that takes requests."""
    return (
        Checkpoint.objects.filter(
            owner=owner,
            release__is_listed=True,
            deployments__removed_at__isnull=True,
            deployments__draining=False,
        )
        .select_related("release__license", "release__family", "owner")
        .distinct()
        .order_by("release__family__name", "release__sort_order", "release__pk", "variant")
    )


@dataclass(frozen=True)
class ServedModel:
    """One entry of `/v1/models` and of the playground's picker."""

    release: Release
    checkpoint: Checkpoint | None = None  # a private checkpoint (its owner's); None: the release's public model

    @property
    def id(self) -> str:
        if self.checkpoint is None:
            return self.release.slug
        return private_model_id(release_slug=self.release.slug, variant=self.checkpoint.variant)

    @property
    def name(self) -> str:
        if self.checkpoint is None:
            return self.release.name
        return f"{self.release.name}, {self.checkpoint.label or self.checkpoint.variant} (yours)"


def user_models(*, user: Any) -> list[ServedModel]:
    """The models `user` may call now (the `/v1/models` list and the playground's picker): served
    releases whose access check passes, then the user's own served private checkpoints of releases
    whose access check passes."""
    if not (user and user.is_authenticated):
        return []
    allowed: dict[int, bool] = {}

    def may_use(release: Release) -> bool:
        if release.pk not in allowed:
            allowed[release.pk] = release_access_check(user=user, release=release).allowed
        return allowed[release.pk]

    public = [ServedModel(release=release) for release in served_releases() if may_use(release)]
    private = [
        ServedModel(release=checkpoint.release, checkpoint=checkpoint)
        for checkpoint in served_private_checkpoints(owner=user)
        if may_use(checkpoint.release)
    ]
    return public + private


# --- Limits -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    tokens_per_day: int
    requests_per_minute: int
    max_concurrent: int
    overridden: frozenset[str] = frozenset()  # the fields a grant override sets


def default_limits() -> Limits:
    return Limits(
        tokens_per_day=settings.GATEWAY_TOKENS_PER_DAY,
        requests_per_minute=settings.GATEWAY_REQUESTS_PER_MINUTE,
        max_concurrent=settings.GATEWAY_MAX_CONCURRENT,
    )


def effective_limits(*, grant: Grant | None) -> Limits:
    """The operator defaults, with the grant's overrides (open releases have no grant: defaults)."""
    limits = default_limits()
    override = GrantLimits.objects.filter(grant=grant).first() if grant is not None else None
    if override is None:
        return limits
    values = {
        name: getattr(override, name)
        for name in ("tokens_per_day", "requests_per_minute", "max_concurrent")
        if getattr(override, name) is not None
    }
    return Limits(**{**limits.__dict__, **values, "overridden": frozenset(values)})


def start_of_day(moment: datetime) -> datetime:
    """Midnight UTC of `moment`'s day: the tokens-per-day window."""
    utc = moment.astimezone(UTC)
    return utc.replace(hour=0, minute=0, second=0, microsecond=0)


def tokens_used_today(*, user_id: int, release_id: int, now: datetime | None = None) -> int:
    now = now or timezone.now()
    total = UsageRecord.objects.filter(
        user_id=user_id, release_id=release_id, created_at__gte=start_of_day(now)
    ).aggregate(tokens=Sum("prompt_tokens") + Sum("completion_tokens"))["tokens"]
    return int(total or 0)


# --- The API's doors --------------------------------------------------------------------------


@dataclass(frozen=True)
class Admission:
    release: Release
    grant: Grant | None
    limits: Limits
    tokens_used_today: int
    targets: list[ReplicaTarget]
    checkpoint: Checkpoint | None = None  # the private checkpoint `model` names; None: the release's model


def _model_of(*, user: User, model: str) -> tuple[Release, Checkpoint | None] | None:
    """The release (and private checkpoint) `model` names for `user`, if it is served: a release's slug
    with a deployment of a public checkpoint, or `<slug>:<variant>` of the user's own private checkpoint
    with a deployment. None for anything else, someone else's private checkpoint included."""
    slug, separator, variant = model.partition(PRIVATE_MODEL_SEPARATOR)
    if not separator:
        release = Release.objects.select_related("license").filter(slug=slug, is_listed=True).first()
        if (
            release is None
            or not release.deployments.filter(removed_at__isnull=True, checkpoint__owner__isnull=True).exists()
        ):
            return None
        return release, None
    checkpoint = (
        Checkpoint.objects.select_related("release__license")
        .filter(
            release__slug=slug,
            release__is_listed=True,
            variant=variant,
            owner=user,
            deployments__removed_at__isnull=True,
        )
        .first()
    )
    return (checkpoint.release, checkpoint) if checkpoint is not None else None


def completion_admission(*, user: User, model: str, now: datetime | None = None) -> Admission:
    """May `user` send `model` a completion now? Reads live rows on every call.

    Raises the API's error: 404 unknown or unserved model (or another user's private one), 403 no
    access (the access decision's reason as the code), 429 tokens_per_day, 503 no replica takes
    requests. The request-rate and concurrency limits are counted by `gateway.counters`, outside the
    database. A private model shares its release's quotas.
    """
    now = now or timezone.now()
    found = _model_of(user=user, model=model)
    if found is None:
        raise errors.model_not_found(model)
    release, checkpoint = found
    try:
        decision = release_access_check(user=user, release=release, now=now)
        if not decision.allowed:
            raise errors.GatewayError(403, decision.message, type="permission_error", code=decision.reason)
        limits = effective_limits(grant=decision.grant)
        used = tokens_used_today(user_id=user.pk, release_id=release.pk, now=now)
        if used >= limits.tokens_per_day:
            tomorrow = start_of_day(now) + timedelta(days=1)
            raise errors.quota_exceeded(
                "tokens_per_day",
                f"Daily token limit reached for {release.slug}: {used} of {limits.tokens_per_day} tokens used "
                f"today (UTC). It resets at {tomorrow:%Y-%m-%d %H:%M} UTC.",
                retry_after=int((tomorrow - now).total_seconds()) + 1,
            )
        targets = serving_targets(release, checkpoint=checkpoint)
        if not targets:
            raise errors.unavailable(f"No engine for {model} takes requests now; try again shortly.")
    except errors.GatewayError as error:
        error.release_id = release.pk
        raise
    return Admission(
        release=release,
        grant=decision.grant,
        limits=limits,
        tokens_used_today=used,
        targets=targets,
        checkpoint=checkpoint,
    )


def access_recheck(
    *, user_id: int, api_key_id: int | None, release_id: int, checkpoint_id: int | None = None
) -> errors.GatewayError | None:
    """For a request already running: None while the caller still may use the release (and, for a
    private model, still owns `checkpoint_id`), else the error to end it with (grant revoked or expired,
    key revoked, account disabled)."""
    user = User.objects.filter(pk=user_id).first()
    release = Release.objects.select_related("license").filter(pk=release_id).first()
    ended = errors.GatewayError(403, "Access ended.", type="permission_error", code="access_ended")
    if user is None or release is None:
        return ended
    if checkpoint_id is not None and not Checkpoint.objects.filter(pk=checkpoint_id, owner_id=user_id).exists():
        return ended
    if api_key_id is not None:
        key = ApiKey.objects.filter(pk=api_key_id).first()
        if key is None or not key.is_usable:
            return errors.GatewayError(
                401, "This API key was revoked or expired.", type="authentication_error", code="invalid_api_key"
            )
    decision = release_access_check(user=user, release=release)
    if not decision.allowed:
        return errors.GatewayError(403, decision.message, type="permission_error", code=decision.reason)
    return None


# --- Grants' limits pages ---------------------------------------------------------------------


def access_limits_grant(*, actor: Any, grant_id: Any) -> Grant:
    if not is_operator(actor):
        raise Http404("No such grant.")
    try:
        return Grant.objects.select_related("user", "release").get(pk=int(grant_id))
    except (Grant.DoesNotExist, ValueError, TypeError, OverflowError):
        raise Http404("No such grant.") from None


# --- Usage ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DayUsage:
    day: date
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def user_usage_by_day(*, user: Any, days: int = 30, now: datetime | None = None) -> list[DayUsage]:
    """The user's requests and tokens per UTC day and model, over the last `days` days, oldest first."""
    now = now or timezone.now()
    since = start_of_day(now) - timedelta(days=days - 1)
    rows = (
        UsageRecord.objects.filter(user=user, created_at__gte=since)
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day", "model")
        .annotate(requests=Count("pk"), prompt=Sum("prompt_tokens"), completion=Sum("completion_tokens"))
        .order_by("day", "model")
    )
    return [
        DayUsage(
            day=row["day"],
            model=row["model"],
            requests=row["requests"],
            prompt_tokens=int(row["prompt"] or 0),
            completion_tokens=int(row["completion"] or 0),
        )
        for row in rows
    ]


@dataclass(frozen=True)
class UsageFilters:
    date_from: date | None = None
    date_to: date | None = None  # inclusive
    release: str = ""  # slug
    user_email: str = ""  # contains


def _filtered_usage(filters: UsageFilters) -> QuerySet[UsageRecord]:
    queryset = UsageRecord.objects.all()
    if filters.date_from:
        queryset = queryset.filter(created_at__gte=_utc_midnight(filters.date_from))
    if filters.date_to:
        queryset = queryset.filter(created_at__lt=_utc_midnight(filters.date_to + timedelta(days=1)))
    if filters.release:
        queryset = queryset.filter(release__slug=filters.release)
    if filters.user_email.strip():
        queryset = queryset.filter(user__email__icontains=filters.user_email.strip())
    return queryset


def _utc_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def usage_by_user_release(filters: UsageFilters) -> list[dict[str, Any]]:
    """Per user and release: requests, refused requests, tokens, mean latency; busiest first."""
    rows = (
        _filtered_usage(filters)
        .values("user_id", "user__email", "release__slug", "model")
        .annotate(
            requests=Count("pk"),
            refused=Count("pk", filter=~Q(status="ok")),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
            latency_ms=Sum("latency_ms"),
        )
        .order_by("-requests", "user__email", "model")
    )
    return [dict(row) for row in rows]


USAGE_CSV_COLUMNS = (
    "time",
    "user_email",
    "api_key",
    "model",
    "release",
    "deployment_id",
    "replica_id",
    "stream",
    "status",
    "http_status",
    "error_code",
    "prompt_tokens",
    "completion_tokens",
    "usage_exact",
    "latency_ms",
    "first_token_ms",
)


def usage_csv_rows(filters: UsageFilters, *, limit: int) -> Iterator[list[str]]:
    """Usage rows, oldest first, as CSV cells; at most `limit` rows, read with a server-side cursor."""
    queryset = (
        _filtered_usage(filters)
        .select_related("user", "api_key", "release")
        .order_by("created_at", "pk")
        .only(
            "created_at",
            "user__email",
            "api_key__key_prefix",
            "model",
            "release__slug",
            "deployment_id",
            "replica_id",
            "stream",
            "status",
            "http_status",
            "error_code",
            "prompt_tokens",
            "completion_tokens",
            "usage_exact",
            "latency_ms",
            "first_token_ms",
        )
    )
    for record in queryset[:limit].iterator(chunk_size=2000):
        yield [
            record.created_at.isoformat(),
            record.user.email,
            f"{record.api_key.key_prefix}…" if record.api_key is not None else "session",
            record.model,
            record.release.slug if record.release is not None else "",
            str(record.deployment_id or ""),
            str(record.replica_id or ""),
            "1" if record.stream else "0",
            record.status,
            str(record.http_status),
            record.error_code,
            str(record.prompt_tokens),
            str(record.completion_tokens),
            "1" if record.usage_exact else "0",
            str(record.latency_ms),
            "" if record.first_token_ms is None else str(record.first_token_ms),
        ]


def usage_row_count(filters: UsageFilters) -> int:
    return _filtered_usage(filters).count()

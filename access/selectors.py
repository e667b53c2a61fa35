"""Reads of the access app, including the one question every later feature asks:
may this user use this release now?
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Q, QuerySet
from django.db.models.functions import TruncWeek
from django.http import Http404
from django.utils import timezone

from access.errors import NotAllowed
from access.models import (
    AccessTier,
    ApiKey,
    Application,
    ApplicationStatus,
    Grant,
    GrantStatus,
    LicenseAcceptance,
    Release,
    User,
)
from access.models.applications import PENDING_STATUSES

# --- The access question ----------------------------------------------------------------------


@dataclass(frozen=True)
class AccessDecision:
    allowed: bool
    reason: str  # stable code: ok, anonymous, inactive, license_not_accepted, license_changed, no_grant, grant_expired, grant_revoked
    message: str
    grant: Grant | None = None

    def __bool__(self) -> bool:
        return self.allowed


def release_access_check(*, user: Any, release: Release, now: datetime | None = None) -> AccessDecision:
    """May `user` use `release` now? The single answer for downloads, API keys and jobs.

    Open releases: a signed-in user who accepted the current license version.
    Gated releases: additionally an active grant, not revoked, not expired. Reads live rows every
    call, so a revocation or a new license version applies to the very next check.
    """
    now = now or timezone.now()
    if user is None or not user.is_authenticated:
        return AccessDecision(False, "anonymous", "Sign in to use this release.")
    if not user.is_active:
        return AccessDecision(False, "inactive", "This account is disabled.")
    grant = None
    if release.access_tier == AccessTier.GATED:
        grant = Grant.objects.filter(user=user, release=release).order_by("-expires_at").first()
        active = (
            Grant.objects.filter(
                user=user, release=release, status=GrantStatus.ACTIVE, starts_at__lte=now, expires_at__gt=now
            )
            .order_by("-expires_at")
            .first()
        )
        if active is None:
            if grant is None:
                return AccessDecision(False, "no_grant", f"{release.name} is gated: apply for access first.")
            if grant.status == GrantStatus.REVOKED:
                return AccessDecision(False, "grant_revoked", f"Your access to {release.name} was revoked.", grant)
            return AccessDecision(
                False, "grant_expired", f"Your access to {release.name} expired on {grant.expires_at:%Y-%m-%d}.", grant
            )
        grant = active
    current = release.license.current_version
    accepted = LicenseAcceptance.objects.filter(user=user, release=release)
    if current is None or not accepted.filter(license_version=current).exists():
        if accepted.exists():
            return AccessDecision(
                False,
                "license_changed",
                f"The license of {release.name} changed (now version {current.version if current else '?'}): "
                "accept the new version to continue.",
                grant,
            )
        return AccessDecision(False, "license_not_accepted", f"Accept the license of {release.name} first.", grant)
    return AccessDecision(True, "ok", "Access granted.", grant)


def user_may_use_release(*, user: Any, release: Release) -> bool:
    return release_access_check(user=user, release=release).allowed


# --- Guarded rows -----------------------------------------------------------------------------


def access_application(*, actor: User, application_id: int) -> Application:
    """An application its applicant or a reviewer may see; anyone else gets a 404 (no existence leak)."""
    queryset = Application.objects.select_related(
        "release", "applicant", "decided_by", "reviewer", "license_acceptance__license_version"
    )
    try:
        application = queryset.get(pk=application_id)
    except (Application.DoesNotExist, ValueError, TypeError):
        raise Http404("No such application.") from None
    if actor.is_authenticated and (application.applicant_id == actor.pk or actor.is_reviewer):
        return application
    raise Http404("No such application.")


def access_grant(*, actor: User, grant_id: int) -> Grant:
    try:
        grant = Grant.objects.select_related("release", "user", "application").get(pk=grant_id)
    except (Grant.DoesNotExist, ValueError, TypeError):
        raise Http404("No such grant.") from None
    if actor.is_authenticated and (grant.user_id == actor.pk or actor.is_reviewer or actor.is_staff):
        return grant
    raise Http404("No such grant.")


def user_api_keys(*, user: User) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user=user).order_by("-created_at", "-pk")


def access_api_key(*, actor: User, key_id: int) -> ApiKey:
    """One of the actor's own API keys; anyone else's is a 404."""
    key = user_api_keys(user=actor).filter(pk=key_id).first() if actor.is_authenticated else None
    if key is None:
        raise Http404("No such API key.")
    return key


def require_reviewer(user: Any) -> None:
    if not (user and user.is_authenticated and user.is_reviewer):
        raise NotAllowed("Only reviewers can see this.")


def release_by_slug(slug: str) -> Release:
    release = (
        Release.objects.select_related("family", "license", "data_card", "model_card")
        .filter(slug=slug, is_listed=True)
        .first()
    )
    if release is None:
        raise Http404("No such release.")
    return release


def catalog_releases() -> QuerySet[Release]:
    return Release.objects.filter(is_listed=True).select_related("family", "license")


def user_applications(*, user: User) -> QuerySet[Application]:
    return Application.objects.filter(applicant=user).select_related("release").order_by("-submitted_at")


def user_grants(*, user: User) -> QuerySet[Grant]:
    return Grant.objects.filter(user=user).select_related("release").order_by("-expires_at")


def grant_renewable(grant: Grant, now: datetime | None = None) -> bool:
    now = now or timezone.now()
    return (
        grant.status == GrantStatus.ACTIVE
        and now < grant.expires_at <= now + timedelta(days=settings.GRANT_RENEWAL_WINDOW_DAYS)
        and grant.application_id is not None
        and not grant.renewal_applications.filter(
            status__in=PENDING_STATUSES + (ApplicationStatus.NEEDS_INFO,)
        ).exists()
    )


# --- Reviewer queue ---------------------------------------------------------------------------


@dataclass
class QueueFilters:
    status: list[str] | None = None  # default: pending (submitted + in review)
    release: str | None = None  # slug
    organization_type: str | None = None
    country: str | None = None
    submitted_from: date | None = None
    submitted_to: date | None = None
    search: str = ""


def _start_of_day(day: date) -> datetime:
    # A range on the raw column can use its index; a __date lookup casts every row first.
    return timezone.make_aware(datetime.combine(day, datetime.min.time()))


def review_queue(filters: QueueFilters) -> QuerySet[Application]:
    """Oldest first. Every filter is an indexed column; search is a case-insensitive contains."""
    queryset = Application.objects.select_related("release", "applicant")
    statuses = filters.status or list(PENDING_STATUSES)
    queryset = queryset.filter(status__in=statuses)
    if filters.release:
        queryset = queryset.filter(release__slug=filters.release)
    if filters.organization_type:
        queryset = queryset.filter(organization_type=filters.organization_type)
    if filters.country:
        queryset = queryset.filter(country=filters.country.upper())
    if filters.submitted_from:
        queryset = queryset.filter(submitted_at__gte=_start_of_day(filters.submitted_from))
    if filters.submitted_to:
        queryset = queryset.filter(submitted_at__lt=_start_of_day(filters.submitted_to + timedelta(days=1)))
    term = filters.search.strip()
    if term:
        queryset = queryset.filter(
            Q(full_name__icontains=term) | Q(email__icontains=term) | Q(affiliation__icontains=term)
        )
    return queryset.order_by("submitted_at", "pk")


def review_status_counts() -> dict[str, int]:
    counts = dict(Application.objects.values_list("status").annotate(n=Count("pk")).order_by())
    return {status: counts.get(status, 0) for status in ApplicationStatus.values}


@dataclass
class ReviewMetrics:
    pending: int
    decided_30d: int
    median_hours_30d: float | None
    p90_hours_30d: float | None
    weekly: list[tuple[date, int]]  # (week start, decisions), oldest first


def review_metrics(*, now: datetime | None = None, weeks: int = 12) -> ReviewMetrics:
    now = now or timezone.now()
    pending = Application.objects.filter(status__in=PENDING_STATUSES).count()
    recent = Application.objects.filter(
        decided_at__gte=now - timedelta(days=30), status__in=[ApplicationStatus.APPROVED, ApplicationStatus.REJECTED]
    ).values_list("submitted_at", "decided_at")
    hours = sorted((decided - submitted).total_seconds() / 3600 for submitted, decided in recent)
    median = statistics.median(hours) if hours else None
    p90 = (
        statistics.quantiles(hours, n=10, method="inclusive")[-1] if len(hours) >= 2 else (hours[0] if hours else None)
    )
    start_of_week = (now - timedelta(days=now.weekday())).date()
    first_week = start_of_week - timedelta(weeks=weeks - 1)
    buckets = {first_week + timedelta(weeks=i): 0 for i in range(weeks)}
    per_week = (
        Application.objects.filter(
            decided_at__gte=_start_of_day(first_week),
            status__in=[ApplicationStatus.APPROVED, ApplicationStatus.REJECTED],
        )
        .annotate(week=TruncWeek("decided_at"))
        .values_list("week")
        .annotate(n=Count("pk"))
        .order_by()
    )
    for week, count in per_week:
        week_start = week.date() if isinstance(week, datetime) else week
        if week_start in buckets:
            buckets[week_start] += count
    return ReviewMetrics(
        pending=pending,
        decided_30d=len(hours),
        median_hours_30d=median,
        p90_hours_30d=p90,
        weekly=sorted(buckets.items()),
    )


# --- Signals for reviewers --------------------------------------------------------------------

DISPOSABLE_EMAIL_DOMAINS = frozenset(
    """
    10minutemail.com 20minutemail.com 33mail.com guerrillamail.com guerrillamail.net guerrillamailblock.com
    sharklasers.com grr.la mailinator.com mailinator.net maildrop.cc mailnesia.com mintemail.com moakt.com
    temp-mail.org tempmail.com tempmail.net tempmailo.com throwawaymail.com trashmail.com trashmail.de
    yopmail.com yopmail.net dispostable.com getnada.com fakeinbox.com emailondeck.com spamgourmet.com
    mohmal.com burnermail.io tempr.email discard.email mailpoof.com mytemp.email inboxkitten.com
    """.split()
)
FREE_EMAIL_DOMAINS = frozenset(
    "gmail.com googlemail.com outlook.com hotmail.com live.com yahoo.com icloud.com me.com proton.me "
    "protonmail.com aol.com gmx.de gmx.net mail.ru yandex.ru qq.com 163.com 126.com".split()
)
_AFFILIATION_STOPWORDS = frozenset(
    "the of and for at in university college institute school lab labs laboratory research center centre "
    "inc ltd llc gmbh corp corporation company dept department".split()
)


@dataclass(frozen=True)
class Signal:
    level: str  # "warn" or "info"
    message: str


def _affiliation_matches_domain(affiliation: str, domain: str) -> bool:
    words = [w for w in "".join(c.lower() if c.isalnum() else " " for c in affiliation).split() if len(w) > 2]
    significant = [w for w in words if w not in _AFFILIATION_STOPWORDS] or words
    acronym = "".join(w[0] for w in words)
    labels = domain.lower().split(".")
    return any(w in domain.lower() for w in significant) or (len(acronym) >= 2 and acronym in labels)


def application_signals(application: Application) -> list[Signal]:
    signals: list[Signal] = []
    domain = application.email.rsplit("@", 1)[-1].lower()
    if domain in DISPOSABLE_EMAIL_DOMAINS:
        signals.append(Signal("warn", f"{domain} is a disposable-email domain."))
    elif domain in FREE_EMAIL_DOMAINS:
        signals.append(Signal("info", f"{domain} is a free-mail domain, not an institutional address."))
    elif not _affiliation_matches_domain(application.affiliation, domain):
        signals.append(
            Signal(
                "warn", f"Email domain {domain} does not obviously match the affiliation “{application.affiliation}”."
            )
        )
    # Another account applying for the same release under the same name, or from the same address.
    same = Q(full_name__iexact=application.full_name)
    if application.submitted_ip:
        same |= Q(submitted_ip=application.submitted_ip)
    same_person = (
        Application.objects.filter(release=application.release)
        .exclude(applicant=application.applicant)
        .filter(same)
        .values_list("pk", "email")[:5]
    )
    for pk, email in same_person:
        signals.append(
            Signal("warn", f"Possible duplicate: application #{pk} from {email} has the same name or IP address.")
        )
    earlier_rejections = (
        Application.objects.filter(applicant=application.applicant, status=ApplicationStatus.REJECTED)
        .exclude(pk=application.pk)
        .count()
    )
    if earlier_rejections:
        signals.append(Signal("info", f"The applicant had {earlier_rejections} earlier application(s) declined."))
    return signals


def applicant_history(application: Application) -> dict[str, Any]:
    return {
        "applications": Application.objects.filter(applicant=application.applicant)
        .exclude(pk=application.pk)
        .select_related("release")
        .order_by("-submitted_at"),
        "grants": Grant.objects.filter(user=application.applicant).select_related("release").order_by("-starts_at"),
    }

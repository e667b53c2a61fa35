"""Reads of the access app, including the one question every later feature asks:
may this user use this release now?
"""

from __future__ import annotations

import ipaddress
import statistics
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
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
from access.models.applications import OPEN_STATUSES, PENDING_STATUSES

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
        active = (
            Grant.objects.filter(
                user=user, release=release, status=GrantStatus.ACTIVE, starts_at__lte=now, expires_at__gt=now
            )
            .order_by("-expires_at")
            .first()
        )
        if active is None:
            # Which refusal: the latest grant says why (revoked, expired), or there is none.
            grant = Grant.objects.filter(user=user, release=release).order_by("-starts_at", "-pk").first()
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


# --- Who may do what ---------------------------------------------------------------------------


def is_reviewer(user: Any) -> bool:
    """The one reviewer rule: an active account that is a superuser or holds `access.review_application`
    (the Reviewers group grants it). `is_staff` alone does not count: it only opens the Django admin,
    where model permissions decide what an operator may do."""
    return bool(
        user is not None
        and user.is_authenticated
        and user.is_active
        and (user.is_superuser or user.has_perm("access.review_application"))
    )


def require_reviewer(user: Any, *, to: str = "see this") -> None:
    if not is_reviewer(user):
        raise NotAllowed(
            f"Only reviewers can {to}. An operator can add your account to the {settings.REVIEWER_GROUP} group."
        )


# --- Guarded rows -----------------------------------------------------------------------------


def _application(application_id: Any) -> Application:
    queryset = Application.objects.select_related(
        "release", "applicant", "decided_by", "reviewer", "license_acceptance__license_version"
    )
    try:
        return queryset.get(pk=application_id)
    except (Application.DoesNotExist, ValueError, TypeError):
        raise Http404("No such application.") from None


def access_application(*, actor: User, application_id: int) -> Application:
    """An application its applicant or a reviewer may see; anyone else gets a 404 (no existence leak)."""
    application = _application(application_id)
    if actor.is_authenticated and (application.applicant_id == actor.pk or is_reviewer(actor)):
        return application
    raise Http404("No such application.")


def access_own_application(*, actor: User, application_id: int) -> Application:
    """The actor's own application, for what only its applicant does (answer, withdraw); a reviewer
    reading someone else's gets a 404 here too."""
    application = _application(application_id)
    if actor.is_authenticated and application.applicant_id == actor.pk:
        return application
    raise Http404("No such application.")


def _grant(grant_id: Any) -> Grant:
    try:
        return Grant.objects.select_related("release", "user", "application").get(pk=grant_id)
    except (Grant.DoesNotExist, ValueError, TypeError):
        raise Http404("No such grant.") from None


def access_grant(*, actor: User, grant_id: int) -> Grant:
    """A grant its holder or a reviewer may see; anyone else gets a 404."""
    grant = _grant(grant_id)
    if actor.is_authenticated and (grant.user_id == actor.pk or is_reviewer(actor)):
        return grant
    raise Http404("No such grant.")


def access_own_grant(*, actor: User, grant_id: int) -> Grant:
    """The actor's own grant, for what only its holder does (ask for a renewal)."""
    grant = _grant(grant_id)
    if actor.is_authenticated and grant.user_id == actor.pk:
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


# --- Who may apply or renew, and when --------------------------------------------------------


@dataclass(frozen=True)
class Blocker:
    """Why a user cannot apply or renew now. The services raise it; the pages show it before any typing."""

    code: str  # open_application, has_access, cooldown, renewal_pending, grant_ended, operator_grant, too_early
    message: str
    application: Application | None = None  # the application that explains it, to link to


def reapply_from(application: Application | None) -> datetime | None:
    """When the applicant of a rejected application may apply again for the same release."""
    if application is None or application.status != ApplicationStatus.REJECTED or application.decided_at is None:
        return None
    return application.decided_at + timedelta(days=settings.REAPPLY_COOLDOWN_DAYS)


def apply_blocker(
    *, user: User, release: Release, renewal_of: Grant | None = None, now: datetime | None = None
) -> Blocker | None:
    """Why `user` cannot submit an application for `release` now (a renewal of `renewal_of` when given);
    None when they can."""
    now = now or timezone.now()
    applications = Application.objects.filter(applicant=user, release=release)
    open_application = applications.filter(status__in=OPEN_STATUSES).first()
    if renewal_of is not None:
        return _open_application_blocker(open_application, release) or renewal_blocker(renewal_of, now)
    if open_application is not None:
        return _open_application_blocker(open_application, release)
    current = (
        Grant.objects.filter(
            user=user, release=release, status=GrantStatus.ACTIVE, starts_at__lte=now, expires_at__gt=now
        )
        .order_by("-expires_at")
        .first()
    )
    if current is not None:
        return Blocker(
            "has_access",
            f"You already have access to {release.name} until {current.expires_at:%Y-%m-%d}. "
            "Ask for a renewal from “My access” when it nears expiry.",
        )
    latest = applications.order_by("-submitted_at", "-pk").first()
    opens = reapply_from(latest)
    if opens is not None and now < opens:
        return Blocker(
            "cooldown",
            f"Your last application for {release.name} was declined; you can apply again from {opens:%Y-%m-%d}.",
            latest,
        )
    return None


def _open_application_blocker(application: Application | None, release: Release) -> Blocker | None:
    if application is None:
        return None
    if application.renewal_of_id is not None:
        return Blocker("renewal_pending", f"Your renewal request #{application.pk} is being reviewed.", application)
    return Blocker(
        "open_application",
        f"You already have an open application for {release.name}; follow it on its status page.",
        application,
    )


def renewal_blocker(grant: Grant, now: datetime | None = None) -> Blocker | None:
    """Why the holder cannot ask to renew `grant` now; None when they can."""
    now = now or timezone.now()
    pending = grant.renewal_applications.filter(status__in=OPEN_STATUSES).order_by("-pk").first()
    if pending is not None:
        return _open_application_blocker(pending, grant.release)
    if grant.status != GrantStatus.ACTIVE or grant.expires_at <= now:
        return Blocker(
            "grant_ended", "This grant is no longer active: apply again from the model's page instead of renewing."
        )
    if grant.application_id is None:
        return Blocker("operator_grant", "This grant was made by an operator; ask them to extend it.")
    window = timedelta(days=settings.GRANT_RENEWAL_WINDOW_DAYS)
    if grant.expires_at - now > window:
        return Blocker(
            "too_early",
            f"Renewal opens {settings.GRANT_RENEWAL_WINDOW_DAYS} days before expiry, on "
            f"{grant.expires_at - window:%Y-%m-%d}.",
        )
    return None


def application_grant(application: Application) -> Grant | None:
    """The grant an approved application made, or the grant it renewed; None before approval."""
    if application.status != ApplicationStatus.APPROVED:
        return None
    return application.grants.order_by("-expires_at").first() or application.renewal_of


def grant_renewable(grant: Grant, now: datetime | None = None) -> bool:
    return renewal_blocker(grant, now) is None


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


# The 30-day and 12-week figures change slowly and cost ~100 ms at 100k applications, so every page of
# the queue (each filter click) does not recompute them. Every application transition drops the cached
# copy (services.workflow), whichever door it came through: page, API or bulk.
REVIEW_METRICS_CACHE_KEY = "review:metrics:v1"
REVIEW_METRICS_CACHE_SECONDS = 60


def review_metrics_cached() -> ReviewMetrics:
    metrics = cache.get(REVIEW_METRICS_CACHE_KEY)
    if metrics is None:
        metrics = review_metrics()
        cache.set(REVIEW_METRICS_CACHE_KEY, metrics, REVIEW_METRICS_CACHE_SECONDS)
    return metrics


def review_metrics(*, now: datetime | None = None, weeks: int = 12) -> ReviewMetrics:
    now = now or timezone.now()
    pending = Application.objects.filter(status__in=PENDING_STATUSES).count()
    recent = Application.objects.filter(
        decided_at__gte=now - timedelta(days=30), status__in=[ApplicationStatus.APPROVED, ApplicationStatus.REJECTED]
    ).values_list("submitted_at", "decided_at")
    # decided_at is never null here (the filter above), but the column is nullable.
    hours = sorted((decided - submitted).total_seconds() / 3600 for submitted, decided in recent if decided is not None)
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


def _shared_address(ip: str | None) -> bool:
    """Whether an address says something about who applied: loopback (demo, local tools) says nothing."""
    if not ip:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return not (address.is_loopback or (mapped is not None and mapped.is_loopback) or address.is_unspecified)


def _duplicate_signals(application: Application) -> list[Signal]:
    """Another account applying for the same release under the same name, or from the same address."""
    same = Q(full_name__iexact=application.full_name)
    by_address = _shared_address(application.submitted_ip)
    if by_address:
        same |= Q(submitted_ip=application.submitted_ip)
    others = (
        Application.objects.filter(release=application.release)
        .exclude(applicant=application.applicant)
        .filter(same)
        .order_by("-submitted_at", "-pk")
        .values_list("pk", "email", "full_name", "submitted_ip")[:5]
    )
    signals = []
    for pk, email, full_name, submitted_ip in others:
        matches = []
        if by_address and submitted_ip == application.submitted_ip:
            matches.append(f"the same address {submitted_ip}")
        if full_name.casefold() == application.full_name.casefold() or not matches:
            matches.insert(0, f"the same name “{full_name}”")
        signals.append(
            Signal("warn", f"Possible duplicate: application #{pk} from {email} has {' and '.join(matches)}.")
        )
    return signals


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
    signals.extend(_duplicate_signals(application))
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

"""Grants after approval: self-service renewal, revocation, and expiry reminders."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from access import selectors
from access.errors import Conflict, InvalidInput, NotAllowed
from access.models import Application, Grant, GrantStatus, User
from access.notifications import notify
from access.services.applications import ApplicationInput, application_submit
from access.services.audit import RequestMeta, audit_record


def grant_request_renewal(
    *, grant: Grant, user: User, meta: RequestMeta, license_version_id: int | None
) -> Application:
    """A self-service renewal: a new application copied from the last one, marked as a renewal."""
    if grant.user_id != user.pk:
        raise NotAllowed("Only the grant holder can ask to renew it.")
    previous = grant.application
    if previous is None:
        raise NotAllowed("This grant was made by an operator; ask them to extend it.")
    # The renewal rules (window, pending request, grant still running) are checked on submission.
    data = ApplicationInput(
        full_name=previous.full_name,
        affiliation=previous.affiliation,
        organization_type=previous.organization_type,
        role=previous.role,
        country=previous.country,
        research_purpose=previous.research_purpose,
        intended_use=previous.intended_use,
        publications=list(previous.publications),
        license_version_id=license_version_id,
        non_commercial_attested=True,
        accept_license=True,
    )
    return application_submit(applicant=user, release=grant.release, data=data, meta=meta, renewal_of=grant)


def grant_for_approval(*, application: Application, reviewer: User, expires_at: datetime, meta: RequestMeta) -> Grant:
    """The access an approval gives, inside the approval's transaction.

    A grant still running for this user and release is extended (a renewal): never a second one.
    Otherwise a new grant starts now, and every earlier grant (expired or revoked) is kept as history,
    marked superseded: the grant with `superseded_at` unset is always the latest one, and the
    "one current grant per user and release" constraint holds.
    """
    now = timezone.now()
    # Locked, so two approvals for the same person and release never both create a grant.
    latest = list(
        Grant.objects.select_for_update()
        .filter(user=application.applicant, release=application.release, superseded_at__isnull=True)
        .order_by("-expires_at", "-pk")
    )
    running = next((g for g in latest if g.status == GrantStatus.ACTIVE and g.expires_at > now), None)
    if running is not None:
        before = {"expires_at": running.expires_at.isoformat()}
        Grant.objects.filter(pk=running.pk).update(expires_at=max(expires_at, running.expires_at))
        running.refresh_from_db()
        audit_record(
            actor=reviewer,
            action="grant.renew",
            target=running,
            application=application,
            meta=meta,
            before=before,
            after={"expires_at": running.expires_at.isoformat()},
        )
        return running
    superseded = [g.pk for g in latest]
    if superseded:
        Grant.objects.filter(pk__in=superseded).update(superseded_at=now)
    grant = Grant.objects.create(
        user=application.applicant,
        release=application.release,
        application=application,
        starts_at=now,
        expires_at=expires_at,
    )
    audit_record(
        actor=reviewer,
        action="grant.create",
        target=grant,
        application=application,
        meta=meta,
        after={
            "user": grant.user_id,
            "release": application.release.slug,
            "expires_at": expires_at.isoformat(),
            "supersedes": superseded,
        },
    )
    return grant


def grant_revoke(*, grant: Grant, actor: User, reason: str, meta: RequestMeta) -> Grant:
    selectors.require_reviewer(actor, to="revoke grants")
    reason = reason.strip()
    if not reason:
        raise InvalidInput("Say why the grant is revoked; the holder is told.", field="reason")
    with transaction.atomic():
        changed = Grant.objects.filter(pk=grant.pk, status=GrantStatus.ACTIVE).update(
            status=GrantStatus.REVOKED, revoked_at=timezone.now(), revoked_by=actor, revoke_reason=reason
        )
        if not changed:
            raise Conflict(f"Grant #{grant.pk} is already revoked.")
        grant.refresh_from_db()
        audit_record(
            actor=actor,
            action="grant.revoke",
            target=grant,
            application=grant.application,
            meta=meta,
            before={"status": GrantStatus.ACTIVE},
            after={"status": GrantStatus.REVOKED, "reason": reason},
        )
        notify(
            user=grant.user,
            subject=f"Your access to {grant.release.name} was revoked",
            body=f"Reason: {reason}",
            url=reverse("my-applications"),
        )
    return grant


def grants_remind_expiring(*, now: datetime | None = None) -> int:
    """Notify each holder once when their grant enters the renewal window."""
    now = now or timezone.now()
    window_end = now + timedelta(days=settings.GRANT_RENEWAL_WINDOW_DAYS)
    due = Grant.objects.filter(
        status=GrantStatus.ACTIVE, expires_at__gt=now, expires_at__lte=window_end, expiry_reminder_sent_at__isnull=True
    ).select_related("user", "release")
    sent = 0
    for grant in due:
        # Claim the reminder first, so two sweepers never send it twice.
        if not Grant.objects.filter(pk=grant.pk, expiry_reminder_sent_at__isnull=True).update(
            expiry_reminder_sent_at=now
        ):
            continue
        notify(
            user=grant.user,
            subject=f"Your access to {grant.release.name} expires on {grant.expires_at:%Y-%m-%d}",
            body="You can ask for a renewal from your access page; a reviewer confirms it.",
            url=reverse("my-applications"),
        )
        sent += 1
    return sent

"""The state machine every application change goes through.

Each change is one conditional UPDATE (so two reviewers can never both decide), plus an append-only
audit event and a notification to the applicant, in the caller's transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.cache import cache
from django.db import transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from access.errors import Conflict
from access.models import Application, ApplicationStatus, User
from access.notifications import notify
from access.selectors import REVIEW_METRICS_CACHE_KEY
from access.services.audit import RequestMeta, audit_record


def _snapshot(application: Application) -> dict[str, Any]:
    return {"status": application.status, "version": application.version}


_APPLICANT_MESSAGES = {
    "received": ("We received your application for {release}", "Your application #{pk} is in the review queue."),
    ApplicationStatus.IN_REVIEW: ("Your application for {release} is in review", "A reviewer is looking at #{pk}."),
    ApplicationStatus.NEEDS_INFO: (
        "We need more information about your application for {release}",
        "A reviewer asked a question about #{pk}:\n\n{question}\n\n"
        "Answer it on the status page; your application then returns to the queue.",
    ),
    ApplicationStatus.APPROVED: (
        "Your application for {release} is approved",
        "You may use {release} until {expiry}. The status page has the details.",
    ),
    ApplicationStatus.REJECTED: ("Your application for {release} was declined", "Reason: {reason}"),
    ApplicationStatus.WITHDRAWN: ("You withdrew your application for {release}", "Application #{pk} is closed."),
}


def notify_applicant(
    application: Application, event: str, *, expiry: datetime | None = None, question: str = ""
) -> None:
    subject, body = _APPLICANT_MESSAGES[event]
    values = {
        "release": application.release.name,
        "pk": application.pk,
        "expiry": f"{expiry:%Y-%m-%d}" if expiry else "",
        "reason": application.rejection_reason,
        "question": question,
    }
    notify(
        user=application.applicant,
        subject=subject.format(**values),
        body=body.format(**values),
        url=reverse("application-detail", args=[application.pk]),
    )


_ACTION_PAST = {
    "application.start_review": "moved into review",
    "application.request_info": "sent back for information",
    "application.answer": "answered",
    "application.approve": "approved",
    "application.reject": "rejected",
    "application.withdraw": "withdrawn",
}


def transition(
    application: Application,
    *,
    actor: User,
    action: str,
    to: str,
    allowed_from: tuple[str, ...],
    meta: RequestMeta,
    expected_version: int | None = None,
    **updates: Any,
) -> Application:
    """Move `application` to `to` if, and only if, nobody moved it first.

    One conditional UPDATE decides the race: the loser gets a Conflict naming what happened.
    """
    rows = Application.objects.filter(pk=application.pk, status__in=allowed_from)
    if expected_version is not None:
        rows = rows.filter(version=expected_version)
    before = _snapshot(application)
    changed = rows.update(status=to, version=F("version") + 1, updated_at=timezone.now(), **updates)
    if changed != 1:
        current = Application.objects.select_related("decided_by").get(pk=application.pk)
        if current.decided_by is not None and current.status in (
            ApplicationStatus.APPROVED,
            ApplicationStatus.REJECTED,
        ):
            raise Conflict(
                f"Application #{current.pk} was already {current.get_status_display().lower()} by "
                f"{current.decided_by.get_full_name()} at {current.decided_at:%Y-%m-%d %H:%M} UTC. Reload the page."
            )
        if expected_version is not None and current.version != expected_version:
            raise Conflict(
                f"Application #{current.pk} changed since you opened it (it is now "
                f"'{current.get_status_display()}'). Reload the page and try again."
            )
        if current.status not in allowed_from:
            raise Conflict(
                f"Application #{current.pk} is now '{current.get_status_display()}', so it cannot be "
                f"{_ACTION_PAST[action]} from here. Reload the page."
            )
        raise Conflict(f"Application #{current.pk} changed since you opened it. Reload the page and try again.")
    application.refresh_from_db()
    # Drop the dashboard's cached figures now and again after the commit: a queue page rendered in
    # between would otherwise cache the figures from before this change for a minute.
    _forget_review_metrics()
    transaction.on_commit(_forget_review_metrics)
    audit_record(
        actor=actor,
        action=action,
        target=application,
        application=application,
        meta=meta,
        before=before,
        after={**_snapshot(application), **{k: _jsonable(v) for k, v in updates.items()}},
    )
    return application


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "pk"):
        return value.pk
    return value


def _forget_review_metrics() -> None:
    cache.delete(REVIEW_METRICS_CACHE_KEY)

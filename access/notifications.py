"""Notifications: a row per message (shown in the portal) and an email sent by a Celery task.

The email is enqueued only after the transaction commits, so a rolled-back transition sends nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from access.models import Notification, User


def notify(*, user: User, subject: str, body: str, url: str = "") -> Notification:
    notification = Notification.objects.create(user=user, subject=subject[:200], body=body, url=url)
    from access.tasks import send_notification_email

    # robust: a broker that is down must not turn a committed action into an error page; the
    # periodic sweeper sends what was not sent.
    transaction.on_commit(lambda: send_notification_email.delay(notification.pk), robust=True)
    return notification


def reviewers() -> Iterable[User]:
    return (
        User.objects.filter(is_active=True)
        .filter(
            Q(is_superuser=True)
            | Q(groups__name=settings.REVIEWER_GROUP)
            | Q(user_permissions__codename="review_application")
        )
        .distinct()
    )


def notify_reviewers(*, subject: str, body: str, url: str, only: list[User] | None = None) -> None:
    for reviewer in only if only is not None else reviewers():
        notify(user=reviewer, subject=subject, body=body, url=url)

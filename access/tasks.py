"""Celery tasks of the access app. They take ids and keep their state in rows."""

from __future__ import annotations

import logging
import smtplib
from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.db.models import F
from django.utils import timezone

from access.models import Notification

log = logging.getLogger(__name__)


@shared_task(
    acks_late=True,
    soft_time_limit=60,
    time_limit=90,
    autoretry_for=(smtplib.SMTPException, OSError),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=8,
)
def send_notification_email(notification_id: int) -> None:
    """Send one notification's email once; a re-run after success is a no-op."""
    notification = Notification.objects.select_related("user").filter(pk=notification_id).first()
    if notification is None or notification.email_sent_at is not None:
        return
    Notification.objects.filter(pk=notification_id).update(email_attempts=F("email_attempts") + 1)
    body = notification.body
    if notification.url:
        body += f"\n\n{settings.SITE_URL}{notification.url}"
    send_mail(notification.subject, body, settings.DEFAULT_FROM_EMAIL, [notification.user.email])
    Notification.objects.filter(pk=notification_id, email_sent_at__isnull=True).update(email_sent_at=timezone.now())


@shared_task(acks_late=True, soft_time_limit=120, time_limit=180)
def sweep_unsent_notifications() -> int:
    """Re-enqueue emails whose task was lost (broker restart, killed worker). Runs periodically."""
    stale = timezone.now() - timedelta(minutes=5)
    ids = list(
        Notification.objects.filter(email_sent_at__isnull=True, created_at__lt=stale, email_attempts__lt=8).values_list(
            "pk", flat=True
        )[:500]
    )
    for notification_id in ids:
        send_notification_email.delay(notification_id)
    return len(ids)


@shared_task(acks_late=True, soft_time_limit=120, time_limit=180)
def remind_expiring_grants() -> int:
    """Tell holders once that their grant is about to expire, with the renewal link."""
    from access.services.grants import grants_remind_expiring

    return grants_remind_expiring()

"""Celery tasks of the access app. They take ids and keep their state in rows."""

from __future__ import annotations

import logging
import smtplib

from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.db.models import F
from django.utils import timezone

from access.models import Notification

log = logging.getLogger(__name__)


@shared_task(
    queue="default",
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

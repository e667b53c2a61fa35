"""In-app notifications: marking them read."""

from __future__ import annotations

from django.utils import timezone

from access.models import Notification, User


def notifications_mark_read(*, user: User, ids: list[int]) -> int:
    """Mark the user's own notifications among `ids` as read; returns how many changed."""
    return Notification.objects.filter(user=user, pk__in=ids, read_at__isnull=True).update(read_at=timezone.now())

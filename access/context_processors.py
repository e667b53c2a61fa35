from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from access.selectors import is_reviewer


def roles(request: HttpRequest) -> dict[str, Any]:
    user = getattr(request, "user", None)
    authenticated = bool(user and user.is_authenticated)
    return {
        "is_reviewer": is_reviewer(user),
        "unread_notifications": user.notifications.filter(read_at__isnull=True).count() if authenticated else 0,  # type: ignore[union-attr]
    }

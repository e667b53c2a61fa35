"""Errors the access services raise. Each message says what was wrong and what to do about it."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied


class AccessError(Exception):
    """Base class. `code` is stable for API clients; the message is for people."""

    code = "access_error"
    http_status = 400

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(AccessError):
    code = "invalid"


class NotAllowed(AccessError):
    code = "not_allowed"
    http_status = 403


class Conflict(AccessError):
    """Someone else changed the row first (another reviewer decided, the applicant withdrew...)."""

    code = "conflict"
    http_status = 409


class AccessRefused(NotAllowed, PermissionDenied):
    """No access to a release now (revoked, expired, license changed...). Carries the decision, so the
    403 page can say why and what to do next instead of a bare "not allowed"; the API answers it as
    any NotAllowed."""

    def __init__(self, decision: Any, *, release: Any) -> None:
        super().__init__(decision.message)
        self.decision = decision
        self.release = release

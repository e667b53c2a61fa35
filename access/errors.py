"""Errors the access services raise. Each message says what was wrong and what to do about it."""

from __future__ import annotations


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

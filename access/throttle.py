"""Sign-in throttling: failed attempts counted per email and per client IP in Django's cache.

A sliding window: each failure stores its instant; a key is locked while it holds `limit` failures
younger than `settings.LOGIN_LOCKOUT_SECONDS`. While locked, even the right password is refused, so
guessing is capped at LOGIN_MAX_FAILURES per window per account (and 4x that per IP, so one
network cannot sweep many accounts). A successful sign-in or a password reset clears the email's
counter; the IP counter only ages out.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

IP_LIMIT_FACTOR = 4


def _now() -> float:
    # One seam, so tests can move the clock instead of sleeping.
    return time.time()


@dataclass(frozen=True)
class Lockout:
    scope: str  # "email" or "ip"
    retry_after_seconds: int

    @property
    def minutes(self) -> int:
        return max(1, math.ceil(self.retry_after_seconds / 60))

    @property
    def message(self) -> str:
        unit = "minute" if self.minutes == 1 else "minutes"
        if self.scope == "email":
            return (
                "Too many failed sign-in attempts for this account. "
                f"Try again in {self.minutes} {unit}, or reset your password."
            )
        return (
            "Too many failed sign-in attempts from your network. "
            f"Try again in {self.minutes} {unit}, or reset your password."
        )


def _key(scope: str, value: str) -> str:
    # Hashed: emails and IPv6 addresses contain characters some cache backends refuse in keys.
    return f"login-fail:{scope}:{hashlib.sha256(value.encode()).hexdigest()[:32]}"


def _limits() -> dict[str, int]:
    return {"email": settings.LOGIN_MAX_FAILURES, "ip": settings.LOGIN_MAX_FAILURES * IP_LIMIT_FACTOR}


def _recent(key: str, now: float) -> list[float]:
    window = settings.LOGIN_LOCKOUT_SECONDS
    return [t for t in cache.get(key, []) if now - t < window]


def _scopes(email: str, ip: str | None) -> list[tuple[str, str]]:
    scopes = [("email", _key("email", email.strip().lower()))]
    if ip:
        scopes.append(("ip", _key("ip", ip)))
    return scopes


def lockout(*, email: str, ip: str | None) -> Lockout | None:
    """The lockout in force for this email or IP, or None when a sign-in may be tried."""
    now = _now()
    limits = _limits()
    for scope, key in _scopes(email, ip):
        failures = _recent(key, now)
        if len(failures) >= limits[scope]:
            # Unlocks when enough of the oldest failures have aged out of the window.
            oldest_that_counts = sorted(failures)[len(failures) - limits[scope]]
            retry_after = oldest_that_counts + settings.LOGIN_LOCKOUT_SECONDS - now
            return Lockout(scope=scope, retry_after_seconds=max(1, math.ceil(retry_after)))
    return None


def record_failure(*, email: str, ip: str | None) -> Lockout | None:
    """Count one failed attempt; returns the lockout it caused, if any."""
    now = _now()
    limits = _limits()
    for scope, key in _scopes(email, ip):
        failures = _recent(key, now)
        failures.append(now)
        # Only the newest `limit` failures can ever matter; keep the entry small.
        cache.set(key, failures[-limits[scope] :], timeout=settings.LOGIN_LOCKOUT_SECONDS)
    return lockout(email=email, ip=ip)


def reset(*, email: str) -> None:
    cache.delete(_key("email", email.strip().lower()))

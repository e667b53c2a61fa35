"""Sign-in throttling for every password form (the portal's and the Django admin's).

Failures are counted in Django's cache in a sliding window of `settings.LOGIN_LOCKOUT_SECONDS`:
- per account *and* client address: LOGIN_MAX_FAILURES failures lock that account from that address;
- per client address: 4x that, so one network cannot sweep many accounts.
While a key is locked even the right password is refused, so guessing is capped per address.

There is deliberately no per-account lock across all addresses: anyone who knows an email address
could then keep its owner out indefinitely from everywhere. An attacker hammering an account from
one address locks only themselves; the owner signs in from their own address. Guessing spread over
many addresses is bounded by the password rules (10+ characters, not common, not all digits).
IPv6 addresses count per /64, the block one subscriber usually holds, so rotating addresses inside
it does not buy more guesses.

A successful sign-in clears its (account, address) counter; a password reset clears the account's
counters from every address (a generation number in the key, since a cache cannot list keys).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import authenticate
from django.core.cache import cache

from portal.client_ip import client_ip

IP_LIMIT_FACTOR = 4


def _now() -> float:
    # One seam, so tests can move the clock instead of sleeping.
    return time.time()


@dataclass(frozen=True)
class Lockout:
    scope: str  # "account" (this account from this address) or "ip" (this address, any account)
    retry_after_seconds: int

    @property
    def minutes(self) -> int:
        return max(1, math.ceil(self.retry_after_seconds / 60))

    @property
    def message(self) -> str:
        unit = "minute" if self.minutes == 1 else "minutes"
        source = "for this account" if self.scope == "account" else "from your network"
        return f"Too many failed sign-in attempts {source}. Try again in {self.minutes} {unit}, or reset your password."


def _hash(value: str) -> str:
    # Hashed: emails and IPv6 addresses contain characters some cache backends refuse in keys.
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def _normalize_email(email: str) -> str:
    return email.strip().lower()


def _address_bucket(ip: str | None) -> str:
    if not ip:
        return "unknown"
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _generation_key(email: str) -> str:
    return f"login-gen:{_hash(_normalize_email(email))}"


def _limits() -> dict[str, int]:
    return {"account": settings.LOGIN_MAX_FAILURES, "ip": settings.LOGIN_MAX_FAILURES * IP_LIMIT_FACTOR}


def _recent(key: str, now: float) -> list[float]:
    window = settings.LOGIN_LOCKOUT_SECONDS
    return [t for t in cache.get(key, []) if now - t < window]


def _scopes(email: str, ip: str | None) -> list[tuple[str, str]]:
    bucket = _address_bucket(ip)
    generation = cache.get(_generation_key(email), 0)
    account = _hash(f"{_normalize_email(email)}\n{generation}\n{bucket}")
    scopes = [("account", f"login-fail:account:{account}")]
    if ip:
        scopes.append(("ip", f"login-fail:ip:{_hash(bucket)}"))
    return scopes


def lockout(*, email: str, ip: str | None) -> Lockout | None:
    """The lockout in force for this account from this address, or None when a sign-in may be tried."""
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


def reset(*, email: str, ip: str | None) -> None:
    """After a successful sign-in: forget this account's failures from this address."""
    cache.delete(_scopes(email, ip)[0][1])


def reset_account(*, email: str) -> None:
    """After a password reset: forget this account's failures from every address."""
    key = _generation_key(email)
    cache.set(key, cache.get(key, 0) + 1, timeout=None)


def authenticate_throttled(request: Any, *, email: str, password: str) -> tuple[Any, Lockout | None]:
    """Check a password under the throttle: (user, None) on success, (None, lockout or None) otherwise.

    Every password sign-in (portal and admin) goes through here, so no form can guess around the limits.
    """
    email = _normalize_email(email)
    ip = client_ip(request)
    locked = lockout(email=email, ip=ip)
    if locked is not None:
        return None, locked
    user = authenticate(request, username=email, password=password)
    if user is not None:
        reset(email=email, ip=ip)
        return user, None
    return None, record_failure(email=email, ip=ip)

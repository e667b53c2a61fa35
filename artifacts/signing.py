"""Per-user, per-file download links: HMAC-SHA256 over (file id, user id, grant id, expiry).

The key is derived from SECRET_KEY with a salt used for nothing else, so a link signature can never
be replayed as a session, password-reset or any other Django signature. A token is
`<file>.<user>.<grant or 0>.<expiry unix>.<hex mac>`: readable in logs, and any edit to any part
breaks the MAC. A token has exactly one spelling: one that decodes to valid claims but is not the
spelling `sign_link` writes (leading zeros, other scripts' digits, an upper-case MAC, a trailing
newline) is refused like a tampered one, so a link cannot be varied to dodge caches, logs or
per-link records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone
from django.utils.crypto import constant_time_compare, salted_hmac

SALT = "openrelease.artifacts.download-link.v1"
_TOKEN = re.compile(r"([0-9]{1,18})\.([0-9]{1,18})\.([0-9]{1,18})\.([0-9]{1,12})\.([0-9a-f]{64})", re.ASCII)


class BadSignature(ValueError):
    pass


@dataclass(frozen=True)
class LinkClaims:
    file_id: int
    user_id: int
    grant_id: int  # 0 for open releases
    expires: int  # unix seconds

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.expires, tz=UTC)

    def payload(self) -> str:
        return f"{self.file_id}.{self.user_id}.{self.grant_id}.{self.expires}"


def _mac(payload: str) -> str:
    return salted_hmac(SALT, payload, secret=settings.SECRET_KEY, algorithm="sha256").hexdigest()


def link_lifetime() -> timedelta:
    return timedelta(hours=settings.ARTIFACTS_LINK_LIFETIME_HOURS)


def sign_link(
    *, file_id: int, user_id: int, grant_id: int | None, now: datetime | None = None, lifetime: timedelta | None = None
) -> tuple[str, datetime]:
    now = now or timezone.now()
    expires = int((now + (lifetime if lifetime is not None else link_lifetime())).timestamp())
    claims = LinkClaims(file_id=file_id, user_id=user_id, grant_id=grant_id or 0, expires=expires)
    return f"{claims.payload()}.{_mac(claims.payload())}", claims.expires_at


def read_link(token: str) -> LinkClaims:
    """The claims of an untampered token (expired or not). Raises BadSignature otherwise."""
    match = _TOKEN.fullmatch(token or "")
    if not match:
        raise BadSignature("malformed")
    claims = LinkClaims(*(int(match.group(i)) for i in range(1, 5)))
    if not constant_time_compare(_mac(claims.payload()), match.group(5)):
        raise BadSignature("bad signature")
    if match.group(0) != f"{claims.payload()}.{match.group(5)}":
        raise BadSignature("not the canonical spelling")  # e.g. leading zeros: same claims, another link
    return claims

"""The address a request came from: the one answer for the audit log, license acceptances, the
duplicate-applicant signal, download events and the sign-in throttle.

X-Forwarded-For is a list every proxy appends to: `client-supplied, ..., seen-by-proxy-1`. Only the
entries our own proxies appended can be trusted, so with `TRUSTED_PROXY_COUNT=N` the address is the
Nth entry from the right; the leftmost entries are whatever the client chose to send. With the
default 0 no proxy is trusted and the address is REMOTE_ADDR, the peer of the TCP connection.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from django.conf import settings


def _valid_ip(value: str | None) -> str | None:
    # Stored in GenericIPAddressField columns: anything that is not an address must not reach them.
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def client_ip(request: Any) -> str | None:
    """The client address of `request` as far as the configured proxies vouch for it, or None."""
    remote_addr = _valid_ip(request.META.get("REMOTE_ADDR"))
    trusted = settings.TRUSTED_PROXY_COUNT
    if trusted <= 0:
        return remote_addr
    entries = [entry.strip() for entry in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if entry.strip()]
    if len(entries) < trusted:
        # Fewer entries than proxies: the request did not come through them all, so the peer is the client.
        return remote_addr
    return _valid_ip(entries[-trusted]) or remote_addr

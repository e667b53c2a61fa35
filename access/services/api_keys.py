"""API keys: created with their raw value shown once, revoked, never deleted."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from access.errors import InvalidInput
from access.models import ApiKey, User
from access.services.audit import SYSTEM, audit_record


def api_key_create(*, user: User, name: str, expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """Create an API key; the raw key is returned once and never stored."""
    name = name.strip()
    if not name:
        raise InvalidInput("Give the key a name so you can recognise it later.", field="name")
    if expires_at is not None and expires_at <= timezone.now():
        raise InvalidInput("The expiry must be in the future.", field="expires_at")
    raw, prefix, key_hash = ApiKey.generate()
    key = ApiKey.objects.create(user=user, name=name[:100], key_prefix=prefix, key_hash=key_hash, expires_at=expires_at)
    audit_record(actor=user, action="api_key.create", target=key, meta=SYSTEM, after={"name": key.name})
    return key, raw


def api_key_revoke(*, key: ApiKey, actor: User) -> None:
    if key.revoked_at is None:
        ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
        audit_record(actor=actor, action="api_key.revoke", target=key, meta=SYSTEM)

"""Per-grant overrides of the default quotas."""

from __future__ import annotations

from access.errors import InvalidInput, NotAllowed
from access.models import Grant, User
from access.services.audit import RequestMeta, audit_record
from gateway.models import GrantLimits
from gateway.selectors import is_operator

FIELDS = ("tokens_per_day", "requests_per_minute", "max_concurrent")


def grant_limits_set(
    *,
    grant: Grant,
    actor: User,
    meta: RequestMeta,
    tokens_per_day: int | None,
    requests_per_minute: int | None,
    max_concurrent: int | None,
) -> GrantLimits | None:
    """Set the grant's limits; an empty (None) field keeps the operator default, all empty removes the
    override. Applies to the holder's next request."""
    if not is_operator(actor):
        raise NotAllowed("Only operators can change a grant's limits.")
    values = {
        "tokens_per_day": tokens_per_day,
        "requests_per_minute": requests_per_minute,
        "max_concurrent": max_concurrent,
    }
    for name, value in values.items():
        if value is not None and value < 1:
            raise InvalidInput(f"{name.replace('_', ' ')} must be at least 1 (or empty for the default).", field=name)
    current = GrantLimits.objects.filter(grant=grant).first()
    before = {name: getattr(current, name) for name in FIELDS} if current else None
    if all(value is None for value in values.values()):
        if current is not None:
            current.delete()
            audit_record(actor=actor, action="grant.limits", target=grant, meta=meta, before=before, after=None)
        return None
    limits, _ = GrantLimits.objects.update_or_create(grant=grant, defaults={**values, "updated_by": actor})
    if before != values:
        audit_record(actor=actor, action="grant.limits", target=grant, meta=meta, before=before, after=values)
    return limits

"""Where an action came from, and the append-only audit log every write records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from access.models import Application, AuditEvent, User
from portal.client_ip import client_ip


@dataclass(frozen=True)
class RequestMeta:
    """Where an action came from, for the audit log and license acceptances."""

    ip: str | None = None
    user_agent: str = ""

    @classmethod
    def from_request(cls, request: Any) -> RequestMeta:
        return cls(ip=client_ip(request), user_agent=request.META.get("HTTP_USER_AGENT", "")[:500])


SYSTEM = RequestMeta()


def audit_record(
    *,
    actor: User | None,
    action: str,
    target: Any,
    meta: RequestMeta,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    application: Application | None = None,
) -> AuditEvent:
    return AuditEvent.objects.create(
        actor=actor if actor is not None and actor.is_authenticated else None,
        action=action,
        target_type=target._meta.label_lower,
        target_id=str(target.pk),
        application=application,
        before=before,
        after=after,
        ip_address=meta.ip,
        user_agent=meta.user_agent,
    )

"""Template filters of the access app."""

from __future__ import annotations

from typing import Any

from django import template

from access import selectors
from access.audit_display import audit_changes as _audit_changes
from access.countries import country_name as _country_name

register = template.Library()


@register.filter
def country_name(code: str | None) -> str:
    return _country_name(code)


@register.filter
def audit_changes(event: Any) -> list[str]:
    """The readable lines of an AuditEvent's before/after."""
    return _audit_changes(event.before, event.after)


@register.simple_tag
def application_state(application: Any) -> dict[str, Any]:
    """The status to show for an application: an approved one whose grant was revoked or expired says so
    ("Access revoked"), not "Approved"."""
    grant = selectors.application_grant(application)
    if grant is not None and grant.display_status != "active":
        return {"label": f"Access {grant.display_status}", "css": grant.display_status, "grant": grant}
    return {"label": application.get_status_display(), "css": application.status, "grant": grant}

"""`{% usage_summary user %}`: the user's API usage chart, for the account page (access's profile)."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.inclusion_tag("gateway/_usage_summary.html")
def usage_summary(user: Any, days: int = 14) -> dict[str, Any]:
    from gateway.views import usage_context

    return usage_context(user, days=days)

"""Audit events as people read them: "status: submitted → in review", not two Python dicts.

The CSV export keeps the raw JSON (it is for machines and auditors); the pages show this.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from access.models import ApplicationStatus, GrantStatus

_STATUS_LABELS = {**dict(GrantStatus.choices), **dict(ApplicationStatus.choices)}


def _label(key: str) -> str:
    # "decided_by_id" -> "decided by"
    return key.removesuffix("_id").replace("_", " ")


def _value(key: str, value: Any) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "status" and value in _STATUS_LABELS:
        return str(_STATUS_LABELS[value]).lower()
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
        return f"{moment:%Y-%m-%d %H:%M}" if "T" in value else value
    if isinstance(value, list):
        return ", ".join(_value(key, item) for item in value) or "—"
    if isinstance(value, dict):
        return ", ".join(f"{_label(k)} {_value(k, v)}" for k, v in value.items()) or "—"
    return str(value)


def audit_changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """One line per field: "key: old → new" where it changed, "key: value" where only one side has it."""
    before, after = before or {}, after or {}
    lines = []
    for key in [*after, *(k for k in before if k not in after)]:
        if key in before and key in after:
            if before[key] == after[key]:
                continue
            lines.append(f"{_label(key)}: {_value(key, before[key])} → {_value(key, after[key])}")
        elif key in after:
            lines.append(f"{_label(key)}: {_value(key, after[key])}")
        else:
            lines.append(f"{_label(key)}: {_value(key, before[key])} → —")
    return lines

"""The audit log as CSV, streamed row by row so a log of millions of events never sits in memory."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

from django.db.models import QuerySet

from access.models import AuditEvent

AUDIT_CSV_COLUMNS = (
    "time",
    "actor_email",
    "action",
    "target_type",
    "target_id",
    "application_id",
    "before",
    "after",
    "ip_address",
    "user_agent",
)

# Spreadsheet programs run a cell starting with one of these as a formula; user agents and emails are
# typed by outsiders, so such cells get a leading apostrophe (OWASP "CSV injection").
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class AuditFilters:
    application_id: int | None = None
    action: str = ""
    created_from: date | None = None
    created_to: date | None = None


def audit_events(filters: AuditFilters) -> QuerySet[AuditEvent]:
    """Audit events in the order they happened, with the actor joined (one query for any number of rows)."""
    queryset = AuditEvent.objects.select_related("actor")
    if filters.application_id is not None:
        queryset = queryset.filter(application_id=filters.application_id)
    if filters.action:
        queryset = queryset.filter(action=filters.action)
    if filters.created_from:
        queryset = queryset.filter(created_at__date__gte=filters.created_from)
    if filters.created_to:
        queryset = queryset.filter(created_at__date__lte=filters.created_to)
    return queryset.order_by("created_at", "pk")


def _safe_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text


def _json_cell(value: Any) -> str:
    return "" if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)


def audit_row(event: AuditEvent) -> list[str]:
    return [
        event.created_at.isoformat(),
        _safe_cell(event.actor.email if event.actor is not None else ""),
        _safe_cell(event.action),
        _safe_cell(event.target_type),
        _safe_cell(event.target_id),
        str(event.application_id) if event.application_id is not None else "",
        _json_cell(event.before),
        _json_cell(event.after),
        event.ip_address or "",
        _safe_cell(event.user_agent),
    ]


class _Echo:
    """A file-like object whose write returns the line, so csv.writer can feed a streaming response."""

    def write(self, value: str) -> str:
        return value


def audit_csv_lines(events: Iterable[AuditEvent]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(AUDIT_CSV_COLUMNS)
    for event in events:
        yield writer.writerow(audit_row(event))


def stream_audit_csv(queryset: QuerySet[AuditEvent]) -> Iterator[str]:
    # iterator(): server-side cursor on PostgreSQL, chunked fetches elsewhere; no result cache.
    return audit_csv_lines(queryset.iterator(chunk_size=2000))

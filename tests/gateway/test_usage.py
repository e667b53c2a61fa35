"""Usage: the user's page and chart, the operators' table and CSV export, per-grant limits."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from access.models import AuditEvent
from gateway.charts import usage_chart
from gateway.models import GrantLimits, UsageRecord
from gateway.selectors import DayUsage, effective_limits

pytestmark = pytest.mark.django_db


def record(user: Any, release: Any, *, days_ago: int = 0, model: str | None = None, **fields: Any) -> UsageRecord:
    values = {"status": "ok", "http_status": 200, "prompt_tokens": 10, "completion_tokens": 5, "latency_ms": 40}
    values.update(fields)
    return UsageRecord.objects.create(
        created_at=timezone.now() - timedelta(days=days_ago),
        user=user,
        release=release,
        model=model or (release.slug if release else "unknown"),
        **values,
    )


def test_chart_stacks_models_per_day_in_proportion() -> None:
    first = date(2026, 1, 1)
    rows = [
        DayUsage(first, "opt-175b", 2, 60, 40),
        DayUsage(first, "llama-7b", 1, 30, 20),
        DayUsage(first + timedelta(days=2), "opt-175b", 1, 10, 15),
    ]
    chart = usage_chart(rows, first_day=first, days=3)
    assert [bar.tokens for bar in chart.bars] == [150, 0, 25]
    tallest = chart.bars[0]
    assert [s.model for s in tallest.segments] == ["llama-7b", "opt-175b"]
    plot = chart.baseline - 12.0
    assert sum(s.height for s in tallest.segments) == pytest.approx(plot, abs=0.2)
    assert tallest.segments[0].height == pytest.approx(plot * 50 / 150, abs=0.1)
    assert tallest.segments[1].y + tallest.segments[1].height == pytest.approx(tallest.segments[0].y, abs=0.1)
    assert chart.bars[1].segments == [] and chart.total_tokens == 175 and chart.total_requests == 4
    assert dict(chart.legend).keys() == {"llama-7b", "opt-175b"}


def test_my_usage_page_and_profile_show_the_users_own_usage(
    applicant: Any, other_applicant: Any, gated_release: Any
) -> None:
    record(applicant, gated_release, prompt_tokens=100, completion_tokens=23)
    record(applicant, gated_release, days_ago=3)
    record(applicant, None, model="nope", status="refused", http_status=404, prompt_tokens=0, completion_tokens=0)
    record(other_applicant, gated_release, prompt_tokens=999_999)
    client = Client()
    client.force_login(applicant)
    page = client.get("/usage/")
    assert page.status_code == 200
    rows = page.context["usage_rows"]
    today = [row for row in rows if row.model == "opt-175b" and row.day == timezone.now().date()]
    assert today[0].requests == 1 and today[0].total_tokens == 123
    assert sum(row.requests for row in rows) == 3  # the refused request counts as a request
    assert b'data-testid="usage-chart"' in page.content and b"<svg" in page.content
    assert b"999999" not in page.content and b"1000014" not in page.content
    assert b'data-tokens="123"' in page.content
    profile = client.get("/accounts/profile/")
    assert b'data-testid="usage-chart"' in profile.content


def test_operator_usage_table_per_user_and_release(
    reviewer: Any, applicant: Any, other_applicant: Any, gated_release: Any
) -> None:
    for _ in range(3):
        record(applicant, gated_release)
    record(applicant, gated_release, status="refused", http_status=429, prompt_tokens=0, completion_tokens=0)
    record(other_applicant, gated_release, days_ago=40)
    client = Client()
    client.force_login(reviewer)
    rows = client.get("/gateway/usage/").context["rows"]
    mine = next(row for row in rows if row["user__email"] == applicant.email)
    assert (mine["requests"], mine["refused"], mine["prompt_tokens"], mine["completion_tokens"]) == (4, 1, 30, 15)
    since = (timezone.now() - timedelta(days=7)).date().isoformat()
    recent = client.get("/gateway/usage/", {"date_from": since}).context["rows"]
    assert [row["user__email"] for row in recent] == [applicant.email]
    assert client.get("/gateway/usage/", {"date_from": "2026-02-02", "date_to": "2026-02-01"}).status_code == 400


def _csv(response: Any) -> list[list[str]]:
    assert response.streaming
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_usage_csv_is_streamed_filtered_ordered_escaped_and_bounded(
    reviewer: Any, applicant: Any, other_applicant: Any, gated_release: Any, settings: Any
) -> None:
    from access.services.api_keys import api_key_create

    key, _ = api_key_create(user=applicant, name="laptop")
    old = record(applicant, gated_release, days_ago=2, api_key=key)
    new = record(applicant, gated_release, prompt_tokens=7, completion_tokens=3, latency_ms=123, first_token_ms=9)
    hostile = record(other_applicant, None, model='=HYPERLINK("http://x")', status="refused", http_status=404)
    client = Client()
    client.force_login(reviewer)
    rows = _csv(client.get("/gateway/usage.csv"))
    header, body = rows[0], rows[1:]
    assert header[:4] == ["time", "user_email", "api_key", "model"]
    assert [row[0] for row in body] == [r.created_at.isoformat() for r in (old, new, hostile)]
    by_column = dict(zip(header, body[1], strict=True))
    assert by_column["prompt_tokens"] == "7" and by_column["completion_tokens"] == "3"
    assert by_column["latency_ms"] == "123" and by_column["first_token_ms"] == "9" and by_column["api_key"] == "session"
    assert body[0][2] == f"{key.key_prefix}…"
    assert body[2][3].startswith("'=")  # a formula is not run by a spreadsheet
    only_alice = _csv(client.get("/gateway/usage.csv", {"user": "alice"}))
    assert {row[1] for row in only_alice[1:]} == {applicant.email}
    settings.GATEWAY_USAGE_CSV_MAX_ROWS = 2
    bounded = _csv(client.get("/gateway/usage.csv"))
    assert len(bounded) == 1 + 2 + 1 and bounded[-1][0].startswith("# truncated after 2 rows")
    assert client.get("/gateway/usage.csv", {"date_from": "not-a-date"}).status_code == 400


def test_grant_limits_page_sets_and_clears_an_override(
    reviewer: Any, applicant: Any, gated_release: Any, settings: Any
) -> None:
    from tests.artifacts.conftest import grant_access

    grant = grant_access(applicant, gated_release, reviewer)
    client = Client()
    client.force_login(reviewer)
    page = client.get(f"/gateway/grants/{grant.pk}/limits/")
    assert page.status_code == 200 and page.context["limits"] == effective_limits(grant=None)
    assert client.post(f"/gateway/grants/{grant.pk}/limits/", {"tokens_per_day": "0"}).status_code == 400
    saved = client.post(f"/gateway/grants/{grant.pk}/limits/", {"tokens_per_day": "5000", "max_concurrent": "1"})
    assert saved.status_code == 302
    limits = effective_limits(grant=grant)
    assert (limits.tokens_per_day, limits.max_concurrent) == (5000, 1)
    assert limits.requests_per_minute == settings.GATEWAY_REQUESTS_PER_MINUTE
    assert limits.overridden == {"tokens_per_day", "max_concurrent"}
    client.post(f"/gateway/grants/{grant.pk}/limits/", {"tokens_per_day": "", "max_concurrent": ""})
    assert not GrantLimits.objects.filter(grant=grant).exists()
    actions = list(AuditEvent.objects.filter(action="grant.limits").values_list("after", flat=True))
    assert actions == [{"tokens_per_day": 5000, "requests_per_minute": None, "max_concurrent": 1}, None]
    # The grants list links to it.
    assert f"/gateway/grants/{grant.pk}/limits/".encode() in client.get("/review/grants/").content


def test_another_users_grant_page_is_refused_to_applicants(
    applicant: Any, other_applicant: Any, gated_release: Any, reviewer: Any
) -> None:
    from tests.artifacts.conftest import grant_access

    grant = grant_access(other_applicant, gated_release, reviewer)
    client = Client()
    client.force_login(applicant)
    assert client.post(f"/gateway/grants/{grant.pk}/limits/", {"tokens_per_day": "10"}).status_code == 403
    assert not GrantLimits.objects.exists()

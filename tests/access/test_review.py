"""The reviewer dashboard: who may see it, the queue's filters and cost, decisions, grants and the audit CSV."""

from __future__ import annotations

import csv
import io
import re
import statistics
from datetime import date, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from access.csv_export import AUDIT_CSV_COLUMNS
from access.models import (
    Application,
    ApplicationMessage,
    ApplicationStatus,
    AuditEvent,
    Grant,
    GrantStatus,
    RejectionTemplate,
    ReviewerNote,
)
from access.selectors import release_access_check
from access.services.audit import RequestMeta
from access.services.reviews import application_approve, application_start_review
from access.views.review.chart import human_hours, weekly_chart
from tests import factories
from tests.conftest import login

pytestmark = pytest.mark.django_db
META = RequestMeta(ip="10.0.0.9", user_agent="pytest")


def _apply(
    email: str, release: Any, *, name: str = "", affiliation: str = "Heidelberg University", **overrides: Any
) -> Any:
    """A new verified applicant and their application (through the submit service)."""
    user = factories.make_user(email, full_name=name or email.split("@")[0].title(), affiliation=affiliation)
    return factories.make_application(
        user, release, full_name=name or user.full_name, affiliation=affiliation, **overrides
    )


def _queue_ids(response: Any) -> list[int]:
    return [int(pk) for pk in re.findall(r'data-application="(\d+)"', response.content.decode())]


def _messages(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def _csv_rows(response: Any) -> list[list[str]]:
    body = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(body)))


def _post_action(client: Any, name: str, application: Any, **data: Any) -> Any:
    data.setdefault("expected_version", application.version)
    return client.post(reverse(name, args=[application.pk]), data, follow=True)


# --- Who may see it ---------------------------------------------------------------------------


def _review_urls(application: Any, grant: Any) -> tuple[list[str], list[str]]:
    pages = [
        reverse("review-queue"),
        reverse("review-grants"),
        reverse("review-detail", args=[application.pk]),
        reverse("review-audit-csv"),
        reverse("review-application-audit-csv", args=[application.pk]),
    ]
    actions = [
        reverse("review-bulk"),
        reverse("review-grant-revoke", args=[grant.pk]),
        *(
            reverse(name, args=[application.pk])
            for name in ("review-start", "review-approve", "review-reject", "review-request-info", "review-note")
        ),
    ]
    return pages, actions


@pytest.fixture
def grant(other_applicant: Any, gated_release: Any, reviewer: Any) -> Any:
    application = factories.make_application(
        other_applicant, gated_release, full_name="Bob Brown", affiliation="ETH Zurich"
    )
    return application_approve(application=application, reviewer=reviewer, meta=META)


def test_anonymous_is_sent_to_sign_in(client: Any, application: Any, grant: Any) -> None:
    pages, actions = _review_urls(application, grant)
    for url in pages:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("login")) and "next=" in response["Location"], url
    for url in actions:
        response = client.post(url, {"reason": "x", "expected_version": 1})
        assert response.status_code == 302 and response["Location"].startswith(reverse("login")), url
    assert Grant.objects.get(pk=grant.pk).status == GrantStatus.ACTIVE


def test_applicant_gets_403_everywhere(client: Any, applicant: Any, application: Any, grant: Any) -> None:
    login(client, applicant)
    pages, actions = _review_urls(application, grant)
    for url in pages:
        assert client.get(url).status_code == 403, url
    for url in actions:
        response = client.post(
            url,
            {
                "reason": "x",
                "expected_version": application.version,
                "expires_on": "2099-01-01",
                "message": "?",
                "body": "note",
                "application_ids": [application.pk],
                "decision": "approve",
            },
        )
        assert response.status_code == 403, url
    application.refresh_from_db()
    assert application.status == ApplicationStatus.SUBMITTED
    assert Grant.objects.get(pk=grant.pk).status == GrantStatus.ACTIVE
    assert not ReviewerNote.objects.exists()


def test_staff_without_reviewer_permission_gets_403(client: Any, application: Any) -> None:
    staff = factories.make_user("ops@release.example")
    staff.is_staff = True
    staff.save(update_fields=["is_staff"])
    login(client, staff)
    response = client.get(reverse("review-queue"))
    assert response.status_code == 403
    assert b"Only reviewers can see this." in response.content


@pytest.mark.parametrize("persona", ["reviewer", "admin"])
def test_reviewers_and_admins_see_every_page(
    client: Any, request: Any, persona: str, application: Any, grant: Any
) -> None:
    login(client, request.getfixturevalue(persona))
    pages, _ = _review_urls(application, grant)
    for url in pages:
        assert client.get(url).status_code == 200, url


def test_unknown_application_is_404(client: Any, reviewer: Any) -> None:
    login(client, reviewer)
    assert client.get(reverse("review-detail", args=[999_999])).status_code == 404
    assert client.post(reverse("review-approve", args=[999_999]), {"expected_version": 1}).status_code == 404
    assert client.get(reverse("review-application-audit-csv", args=[999_999])).status_code == 404
    assert client.post(reverse("review-grant-revoke", args=[999_999]), {"reason": "x"}).status_code == 404


def test_actions_refuse_get(client: Any, reviewer: Any, application: Any) -> None:
    login(client, reviewer)
    assert client.get(reverse("review-approve", args=[application.pk])).status_code == 405
    assert client.get(reverse("review-bulk")).status_code == 405


# --- The queue --------------------------------------------------------------------------------


@pytest.fixture
def varied(gated_release: Any) -> dict[str, Any]:
    """Applications that differ in exactly one attribute each from the baseline."""
    other_release = factories.make_release(slug="llama-65b", name="LLaMA-65B", gated=True)
    rows = {
        "base": _apply("base@uni-heidelberg.de", gated_release, name="Anna Base"),
        "release": _apply("rel@uni-heidelberg.de", other_release, name="Rel Other"),
        "org": _apply("org@gov.example", gated_release, name="Gov Person", organization_type="government"),
        "country": _apply("fr@sorbonne.fr", gated_release, name="Marie Curie", country="FR", affiliation="Sorbonne"),
        "in_review": _apply("ir@uni-heidelberg.de", gated_release, name="In Review"),
        "approved": _apply("ok@uni-heidelberg.de", gated_release, name="Was Approved"),
        "old": _apply("old@uni-heidelberg.de", gated_release, name="Old Timer"),
        "affiliation": _apply(
            "x@mit.edu", gated_release, name="Max Tech", affiliation="Massachusetts Institute of Technology"
        ),
    }
    now = timezone.now()
    for index, application in enumerate(rows.values()):
        Application.objects.filter(pk=application.pk).update(submitted_at=now - timedelta(days=10 - index))
    Application.objects.filter(pk=rows["old"].pk).update(submitted_at=now - timedelta(days=40))
    Application.objects.filter(pk=rows["in_review"].pk).update(status=ApplicationStatus.IN_REVIEW)
    Application.objects.filter(pk=rows["approved"].pk).update(status=ApplicationStatus.APPROVED, decided_at=now)
    return {key: Application.objects.get(pk=application.pk) for key, application in rows.items()}


def _pks(varied: dict[str, Any], *keys: str) -> set[int]:
    return {varied[key].pk for key in keys}


def test_queue_defaults_to_pending_oldest_first(client: Any, reviewer: Any, varied: dict[str, Any]) -> None:
    login(client, reviewer)
    ids = _queue_ids(client.get(reverse("review-queue")))
    pending = Application.objects.filter(status__in=["submitted", "in_review"]).order_by("submitted_at", "pk")
    assert ids == [a.pk for a in pending]
    assert ids[0] == varied["old"].pk
    assert varied["approved"].pk not in ids


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"status": "in_review"}, {"in_review"}),
        ({"status": ["approved", "in_review"]}, {"approved", "in_review"}),
        ({"status": "approved"}, {"approved"}),
        ({"release": "llama-65b"}, {"release"}),
        ({"organization_type": "government"}, {"org"}),
        ({"country": "FR"}, {"country"}),
        ({"q": "marie"}, {"country"}),
        ({"q": "GOV.EXAMPLE"}, {"org"}),
        ({"q": "institute of tech"}, {"affiliation"}),
    ],
)
def test_each_filter_narrows(
    client: Any, reviewer: Any, varied: dict[str, Any], params: dict[str, Any], expected: set[str]
) -> None:
    login(client, reviewer)
    response = client.get(reverse("review-queue"), params)
    assert response.status_code == 200
    assert set(_queue_ids(response)) == _pks(varied, *expected)


def test_all_statuses_and_date_range(client: Any, reviewer: Any, varied: dict[str, Any]) -> None:
    login(client, reviewer)
    everything = _queue_ids(client.get(reverse("review-queue"), {"status": "all"}))
    assert set(everything) == {a.pk for a in varied.values()}
    today = timezone.now().date()
    recent = _queue_ids(
        client.get(
            reverse("review-queue"),
            {
                "status": "all",
                "submitted_from": (today - timedelta(days=20)).isoformat(),
            },
        )
    )
    assert set(recent) == set(everything) - {varied["old"].pk}
    old_only = _queue_ids(
        client.get(
            reverse("review-queue"),
            {
                "submitted_from": (today - timedelta(days=41)).isoformat(),
                "submitted_to": (today - timedelta(days=39)).isoformat(),
            },
        )
    )
    assert old_only == [varied["old"].pk]


def test_bad_filter_names_the_field_and_keeps_input(client: Any, reviewer: Any, varied: dict[str, Any]) -> None:
    login(client, reviewer)
    response = client.get(
        reverse("review-queue"),
        {
            "submitted_from": "2024-05-10",
            "submitted_to": "2024-05-01",
            "per_page": "5000",
            "q": "marie",
        },
    )
    html = response.content.decode()
    assert "swap the two dates" in html
    assert "Ensure this value is less than or equal to 200" in html
    assert 'value="marie"' in html and 'value="2024-05-01"' in html
    assert set(_queue_ids(response)) == _pks(varied, "country")  # valid filters still apply


def test_queue_costs_the_same_number_of_queries_at_any_page_size(
    client: Any, reviewer: Any, gated_release: Any
) -> None:
    other_release = factories.make_release(slug="llama-65b", name="LLaMA-65B", gated=True)
    for index in range(60):
        _apply(
            f"person{index}@uni-heidelberg.de", gated_release if index % 2 else other_release, name=f"Person {index}"
        )
    login(client, reviewer)
    client.get(reverse("review-queue"))  # warm the session
    counts = {}
    for size in (5, 50):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(reverse("review-queue"), {"per_page": size})
        assert len(_queue_ids(response)) == size
        counts[size] = len(queries)
    assert counts[5] == counts[50]


def test_pagination_keeps_filters(client: Any, reviewer: Any, gated_release: Any) -> None:
    for index in range(7):
        _apply(f"p{index}@uni-heidelberg.de", gated_release, name=f"Person {index}")
    login(client, reviewer)
    first = client.get(reverse("review-queue"), {"per_page": 5, "q": "person"})
    assert "Page 1 of 2" in first.content.decode()
    second = client.get(reverse("review-queue"), {"per_page": 5, "q": "person", "page": 2})
    assert len(_queue_ids(second)) == 2
    assert "per_page=5" in first.content.decode() and "q=person" in first.content.decode()


# --- Metrics and chart ------------------------------------------------------------------------


def test_metrics_median_and_p90_from_known_times(client: Any, reviewer: Any, gated_release: Any) -> None:
    decided_at = timezone.now() - timedelta(hours=2)
    hours = list(range(1, 11))  # 1..10 hours from submission to decision
    for index, taken in enumerate(hours):
        application = _apply(f"m{index}@uni-heidelberg.de", gated_release, name=f"Metric {index}")
        Application.objects.filter(pk=application.pk).update(
            status=ApplicationStatus.APPROVED if index % 2 else ApplicationStatus.REJECTED,
            decided_at=decided_at,
            submitted_at=decided_at - timedelta(hours=taken),
        )
    # Decided long ago: outside the 30-day window, must not count.
    stale = _apply("stale@uni-heidelberg.de", gated_release, name="Stale")
    Application.objects.filter(pk=stale.pk).update(
        status=ApplicationStatus.APPROVED,
        decided_at=timezone.now() - timedelta(days=60),
        submitted_at=timezone.now() - timedelta(days=100),
    )
    pending = _apply("pending@uni-heidelberg.de", gated_release, name="Still Pending")

    login(client, reviewer)
    response = client.get(reverse("review-queue"))
    html = response.content.decode()
    assert statistics.median(hours) == 5.5
    assert re.search(r'data-testid="median-time">5\.5 hours<', html)
    assert re.search(r'data-testid="p90-time">9\.1 hours<', html)  # inclusive 90th percentile of 1..10
    assert re.search(r'data-testid="pending-count">1<', html)
    assert _queue_ids(response) == [pending.pk]

    day = timezone.localtime(decided_at).date()
    week = day - timedelta(days=day.weekday())
    assert '<svg role="img"' in html and '<title id="chart-title">Decisions per week' in html
    assert html.count('<g class="bar"') == 12
    assert f'data-week="{week:%Y-%m-%d}" data-count="10"' in html


def test_status_counts_are_shown(client: Any, reviewer: Any, varied: dict[str, Any]) -> None:
    login(client, reviewer)
    html = client.get(reverse("review-queue")).content.decode()
    counts = re.search(r'data-testid="status-counts">(.*?)</ul>', html, re.DOTALL).group(1)  # type: ignore[union-attr]
    assert re.search(r"Submitted</span></a>: 6\b", counts)
    assert re.search(r"In review</span></a>: 1\b", counts)
    assert re.search(r"Approved</span></a>: 1\b", counts)


def test_human_hours_and_chart_geometry() -> None:
    assert human_hours(None) == "—"
    assert human_hours(0.5) == "30 minutes"
    assert human_hours(12.25) == "12.2 hours"
    assert human_hours(60) == "2.5 days"
    chart = weekly_chart([(date(2024, 1, 1), 0), (date(2024, 1, 8), 4), (date(2024, 1, 15), 2)], width=300, height=100)
    heights = [bar.height for bar in chart.bars]
    assert heights[0] == 0 and heights[1] == pytest.approx(2 * heights[2])
    assert all(bar.y + bar.height == pytest.approx(chart.baseline, abs=0.11) for bar in chart.bars)
    assert chart.total == 6 and chart.maximum == 4
    assert weekly_chart([]).bars == []


# --- One application --------------------------------------------------------------------------


def test_detail_shows_the_whole_application(client: Any, reviewer: Any, application: Any, other_applicant: Any) -> None:
    login(client, reviewer)
    html = client.get(reverse("review-detail", args=[application.pk])).content.decode()
    assert 'href="https://doi.org/10.1234/calibration.2024"' in html
    assert 'href="https://arxiv.org/abs/2205.01068"' in html
    assert "opt-175b-license license v1.0" in html
    assert "User agent: pytest" in html and "127.0.0.1" in html
    assert "Germany (DE)" in html
    assert application.research_purpose[:60] in html
    assert "application.submit" in html  # audit trail
    assert f'name="expected_version" value="{application.version}"' in html
    assert reverse("review-start", args=[application.pk]) in html


def test_start_review_assigns_reviewer(client: Any, reviewer: Any, application: Any) -> None:
    login(client, reviewer)
    response = _post_action(client, "review-start", application)
    application.refresh_from_db()
    assert application.status == ApplicationStatus.IN_REVIEW and application.reviewer == reviewer
    assert response.redirect_chain[-1][0] == reverse("review-detail", args=[application.pk])


def test_approve_with_chosen_expiry(client: Any, reviewer: Any, application: Any, applicant: Any) -> None:
    login(client, reviewer)
    expiry = timezone.localdate() + timedelta(days=90)
    response = _post_action(client, "review-approve", application, expires_on=expiry.isoformat())
    application.refresh_from_db()
    assert application.status == ApplicationStatus.APPROVED and application.decided_by == reviewer
    grant = Grant.objects.get(application=application)
    assert timezone.localtime(grant.expires_at).date() == expiry
    assert release_access_check(user=applicant, release=application.release).allowed
    assert any(f"access until {expiry:%Y-%m-%d}" in message for message in _messages(response))


def test_approve_form_defaults_to_configured_days(client: Any, reviewer: Any, application: Any, settings: Any) -> None:
    settings.GRANT_DEFAULT_DAYS = 30
    login(client, reviewer)
    html = client.get(reverse("review-detail", args=[application.pk])).content.decode()
    assert f'value="{timezone.localdate() + timedelta(days=30):%Y-%m-%d}"' in html


def test_approve_with_past_expiry_is_refused_at_the_field(client: Any, reviewer: Any, application: Any) -> None:
    login(client, reviewer)
    response = client.post(
        reverse("review-approve", args=[application.pk]),
        {
            "expected_version": application.version,
            "expires_on": "2001-01-01",
        },
    )
    assert response.status_code == 400
    assert "The grant must expire in the future." in response.content.decode()
    assert 'value="2001-01-01"' in response.content.decode()
    application.refresh_from_db()
    assert application.status == ApplicationStatus.SUBMITTED and not Grant.objects.exists()


def test_reject_with_template_and_free_text(client: Any, reviewer: Any, application: Any) -> None:
    template = RejectionTemplate.objects.create(
        title="Not research", body="Dear {name}, {release} is for research use only."
    )
    login(client, reviewer)
    _post_action(client, "review-reject", application, template=template.pk, reason="Your use is commercial.")
    application.refresh_from_db()
    assert application.status == ApplicationStatus.REJECTED
    assert application.rejection_reason == (
        "Dear Alice Adams, OPT-175B is for research use only.\n\nYour use is commercial."
    )


def test_reject_with_free_text_only_and_copied_template_is_not_doubled(
    client: Any, reviewer: Any, application: Any, other_applicant: Any, gated_release: Any
) -> None:
    login(client, reviewer)
    _post_action(client, "review-reject", application, reason="Out of scope.")
    application.refresh_from_db()
    assert application.rejection_reason == "Out of scope."

    template = RejectionTemplate.objects.create(title="Scope", body="Sorry {name}.")
    second = factories.make_application(other_applicant, gated_release, full_name="Bob Brown", affiliation="ETH Zurich")
    # What the inline script does: the rendered text is already in the box (and edited after it).
    _post_action(client, "review-reject", second, template=template.pk, reason="Sorry Bob Brown.\nMore detail.")
    second.refresh_from_db()
    assert second.rejection_reason == "Sorry Bob Brown.\nMore detail."


def test_reject_without_reason_keeps_the_page_and_input(client: Any, reviewer: Any, application: Any) -> None:
    login(client, reviewer)
    response = client.post(
        reverse("review-reject", args=[application.pk]),
        {
            "expected_version": application.version,
            "template": "99999",
            "reason": "typed words",
        },
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "Select a valid choice" in html and "typed words" in html
    application.refresh_from_db()
    assert application.status == ApplicationStatus.SUBMITTED

    response = client.post(reverse("review-reject", args=[application.pk]), {"expected_version": application.version})
    assert response.status_code == 400
    assert "pick a template or write one" in response.content.decode()


def test_request_info_creates_thread_message(client: Any, reviewer: Any, application: Any) -> None:
    login(client, reviewer)
    response = _post_action(client, "review-request-info", application, message="Which benchmarks will you run?")
    application.refresh_from_db()
    assert application.status == ApplicationStatus.NEEDS_INFO
    message = ApplicationMessage.objects.get(application=application)
    assert message.kind == ApplicationMessage.Kind.INFO_REQUEST and message.author == reviewer
    assert message.body == "Which benchmarks will you run?"
    assert "Which benchmarks will you run?" in response.content.decode()  # shown in the thread


def test_request_info_needs_a_question(client: Any, reviewer: Any, application: Any) -> None:
    login(client, reviewer)
    response = client.post(
        reverse("review-request-info", args=[application.pk]),
        {
            "expected_version": application.version,
            "message": "",
        },
    )
    assert response.status_code == 400 and "This field is required." in response.content.decode()
    assert not ApplicationMessage.objects.exists()


def test_stale_page_gets_a_conflict_and_changes_nothing(
    client: Any, reviewer: Any, second_reviewer: Any, application: Any
) -> None:
    seen_version = application.version
    application_start_review(application=application, reviewer=second_reviewer, meta=META)
    login(client, reviewer)
    response = client.post(
        reverse("review-approve", args=[application.pk]),
        {
            "expected_version": seen_version,
            "expires_on": (timezone.localdate() + timedelta(days=30)).isoformat(),
        },
        follow=True,
    )
    assert any("changed since you opened it" in message for message in _messages(response))
    application.refresh_from_db()
    assert application.status == ApplicationStatus.IN_REVIEW and application.reviewer == second_reviewer
    assert not Grant.objects.exists()
    # Start review from the same stale page: also refused.
    response = client.post(
        reverse("review-start", args=[application.pk]), {"expected_version": seen_version}, follow=True
    )
    assert any("changed since you opened it" in message for message in _messages(response))


def test_second_reviewer_sees_who_decided_first(
    client: Any, reviewer: Any, second_reviewer: Any, application: Any
) -> None:
    seen_version = application.version
    login(client, reviewer)
    _post_action(
        client, "review-approve", application, expires_on=(timezone.localdate() + timedelta(days=30)).isoformat()
    )
    login(client, second_reviewer)
    response = client.post(
        reverse("review-reject", args=[application.pk]),
        {
            "expected_version": seen_version,
            "reason": "Too late.",
        },
        follow=True,
    )
    conflict = [m for m in _messages(response) if "already approved by Rita Reviewer at" in m]
    assert conflict, _messages(response)
    application.refresh_from_db()
    assert application.status == ApplicationStatus.APPROVED and application.decided_by == reviewer
    assert application.rejection_reason == ""
    assert Grant.objects.filter(application=application).count() == 1


def test_notes_are_for_reviewers_only(
    client: Any, reviewer: Any, second_reviewer: Any, applicant: Any, application: Any
) -> None:
    login(client, reviewer)
    _post_action(client, "review-note", application, body="Checked the lab page: real person.")
    assert ReviewerNote.objects.get(application=application).author == reviewer
    login(client, second_reviewer)
    assert (
        "Checked the lab page: real person."
        in client.get(reverse("review-detail", args=[application.pk])).content.decode()
    )
    login(client, applicant)
    assert client.get(reverse("review-detail", args=[application.pk])).status_code == 403
    own_page = client.get(reverse("application-detail", args=[application.pk]))
    assert "Checked the lab page" not in own_page.content.decode()


# --- Bulk decisions ---------------------------------------------------------------------------


def test_bulk_approve_reports_the_conflicting_row(
    client: Any, reviewer: Any, second_reviewer: Any, gated_release: Any
) -> None:
    rows = [_apply(f"b{index}@uni-heidelberg.de", gated_release, name=f"Bulk {index}") for index in range(3)]
    application_approve(application=rows[1], reviewer=reviewer, meta=META)
    login(client, second_reviewer)
    response = client.post(
        reverse("review-bulk"),
        {
            "application_ids": [row.pk for row in rows],
            "decision": "approve",
            "next": reverse("review-queue") + "?q=bulk",
        },
        follow=True,
    )
    assert response.redirect_chain[-1][0] == reverse("review-queue") + "?q=bulk"
    texts = _messages(response)
    assert any(text.startswith(f"2 application(s) approved: #{rows[0].pk}, #{rows[2].pk}") for text in texts)
    assert any(f"#{rows[1].pk} not approved" in t and "already approved by Rita Reviewer" in t for t in texts)
    decided_by = dict(Application.objects.filter(pk__in=[r.pk for r in rows]).values_list("pk", "decided_by"))
    assert decided_by == {rows[0].pk: second_reviewer.pk, rows[1].pk: reviewer.pk, rows[2].pk: second_reviewer.pk}


def test_bulk_reject_with_template_and_reason(
    client: Any, reviewer: Any, second_reviewer: Any, gated_release: Any
) -> None:
    template = RejectionTemplate.objects.create(
        title="Incomplete", body="Dear {name}, the form for {release} was incomplete."
    )
    rows = [_apply(f"r{index}@uni-heidelberg.de", gated_release, name=f"Rej {index}") for index in range(2)]
    application_approve(application=rows[0], reviewer=reviewer, meta=META)
    login(client, second_reviewer)
    response = client.post(
        reverse("review-bulk"),
        {
            "application_ids": [row.pk for row in rows],
            "decision": "reject",
            "template": template.pk,
            "reason": "Please apply again.",
        },
        follow=True,
    )
    texts = _messages(response)
    assert any(f"#{rows[0].pk} not rejected" in text for text in texts)
    rejected = Application.objects.get(pk=rows[1].pk)
    assert rejected.status == ApplicationStatus.REJECTED
    assert rejected.rejection_reason == (
        f"Dear Rej 1, the form for {gated_release.name} was incomplete.\n\nPlease apply again."
    )
    assert Application.objects.get(pk=rows[0].pk).status == ApplicationStatus.APPROVED


def test_bulk_reject_without_reason_changes_nothing(client: Any, reviewer: Any, gated_release: Any) -> None:
    rows = [_apply(f"n{index}@uni-heidelberg.de", gated_release, name=f"None {index}") for index in range(2)]
    login(client, reviewer)
    response = client.post(
        reverse("review-bulk"),
        {
            "application_ids": [rows[0].pk],
            "decision": "reject",
            "next": reverse("review-queue") + "?q=none",
        },
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert f'name="next" value="{reverse("review-queue")}?q=none"' in html  # the filters survive too
    assert set(_queue_ids(response)) == {row.pk for row in rows}
    assert "A bulk rejection needs a reason." in html
    checked = set(re.findall(r'<input type="checkbox" name="application_ids" value="(\d+)"[^>]*\bchecked>', html))
    assert checked == {str(rows[0].pk)}  # the selection survives the error
    assert not Application.objects.filter(status=ApplicationStatus.REJECTED).exists()

    response = client.post(reverse("review-bulk"), {"decision": "approve"})
    assert response.status_code == 400
    assert "Select at least one application" in response.content.decode()


def test_bulk_ignores_unsafe_next(client: Any, reviewer: Any, application: Any) -> None:
    login(client, reviewer)
    response = client.post(
        reverse("review-bulk"),
        {
            "application_ids": [application.pk],
            "decision": "approve",
            "next": "https://evil.example/",
        },
    )
    assert response["Location"] == reverse("review-queue")


# --- Grants -----------------------------------------------------------------------------------


def test_revoke_from_grants_page_refuses_access_at_once(client: Any, reviewer: Any, grant: Any) -> None:
    holder = grant.user
    assert release_access_check(user=holder, release=grant.release).allowed
    login(client, reviewer)
    page = client.get(reverse("review-grants"), {"status": "active"})
    assert f'data-grant="{grant.pk}"' in page.content.decode()
    response = client.post(
        reverse("review-grant-revoke", args=[grant.pk]),
        {
            "reason": "Shared the weights publicly.",
            "next": reverse("review-grants"),
        },
        follow=True,
    )
    assert any("is revoked" in text for text in _messages(response))
    decision = release_access_check(user=holder, release=grant.release)
    assert not decision.allowed and decision.reason == "grant_revoked"
    event = AuditEvent.objects.get(action="grant.revoke")
    assert event.actor == reviewer and event.after["reason"] == "Shared the weights publicly."
    # The filters now place it among the revoked ones.
    assert f'data-grant="{grant.pk}"' not in client.get(reverse("review-grants"), {"status": "active"}).content.decode()
    assert f'data-grant="{grant.pk}"' in client.get(reverse("review-grants"), {"status": "revoked"}).content.decode()
    # A second revocation is a conflict, not an error page.
    again = client.post(reverse("review-grant-revoke", args=[grant.pk]), {"reason": "again"}, follow=True)
    assert any("already revoked" in text for text in _messages(again))


def test_revoke_needs_a_reason(client: Any, reviewer: Any, grant: Any) -> None:
    login(client, reviewer)
    response = client.post(reverse("review-grant-revoke", args=[grant.pk]), {"reason": "  "}, follow=True)
    assert any("Reason" in text for text in _messages(response))
    assert Grant.objects.get(pk=grant.pk).status == GrantStatus.ACTIVE


def test_grants_filter_by_release(client: Any, reviewer: Any, grant: Any) -> None:
    factories.make_release(slug="llama-65b", name="LLaMA-65B", gated=True)
    login(client, reviewer)
    assert f'data-grant="{grant.pk}"' in client.get(reverse("review-grants"), {"release": "opt-175b"}).content.decode()
    assert (
        f'data-grant="{grant.pk}"'
        not in client.get(reverse("review-grants"), {"release": "llama-65b"}).content.decode()
    )


# --- Audit CSV --------------------------------------------------------------------------------


def test_audit_csv_has_header_and_every_event(client: Any, reviewer: Any, application: Any, grant: Any) -> None:
    login(client, reviewer)
    response = client.get(reverse("review-audit-csv"))
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = _csv_rows(response)
    assert tuple(rows[0]) == AUDIT_CSV_COLUMNS
    assert len(rows) - 1 == AuditEvent.objects.count()
    approve = next(row for row in rows[1:] if row[2] == "application.approve")
    assert approve[1] == reviewer.email and approve[3] == "access.application"
    assert '"status": "approved"' in approve[7] and approve[8] == "10.0.0.9" and approve[9] == "pytest"


def test_audit_csv_filters(client: Any, reviewer: Any, application: Any, grant: Any) -> None:
    login(client, reviewer)
    rows = _csv_rows(client.get(reverse("review-audit-csv"), {"action": "grant.create"}))
    assert [row[2] for row in rows[1:]] == ["grant.create"]
    rows = _csv_rows(client.get(reverse("review-audit-csv"), {"application": application.pk}))
    assert {row[5] for row in rows[1:]} == {str(application.pk)}
    tomorrow = timezone.localdate() + timedelta(days=1)
    rows = _csv_rows(client.get(reverse("review-audit-csv"), {"created_from": tomorrow.isoformat()}))
    assert rows == [list(AUDIT_CSV_COLUMNS)]
    bad = client.get(reverse("review-audit-csv"), {"application": "abc"})
    assert bad.status_code == 400 and b"application: Enter a whole number." in bad.content


def test_application_csv_has_only_its_events(client: Any, reviewer: Any, application: Any, grant: Any) -> None:
    login(client, reviewer)
    response = client.get(reverse("review-application-audit-csv", args=[grant.application_id]))
    rows = _csv_rows(response)
    assert tuple(rows[0]) == AUDIT_CSV_COLUMNS
    assert {row[5] for row in rows[1:]} == {str(grant.application_id)}
    assert [row[2] for row in rows[1:]] == ["application.submit", "application.approve", "grant.create"]


def test_audit_csv_defuses_spreadsheet_formulas(client: Any, reviewer: Any, gated_release: Any) -> None:
    user = factories.make_user("eve@evil.example")
    from access.services.applications import application_submit

    application_submit(
        applicant=user,
        release=gated_release,
        data=factories.application_input(gated_release),
        meta=RequestMeta(ip="10.0.0.1", user_agent='=HYPERLINK("http://evil.example")'),
    )
    login(client, reviewer)
    rows = _csv_rows(client.get(reverse("review-audit-csv")))
    agents = {row[9] for row in rows[1:] if row[9]}
    assert agents == {'\'=HYPERLINK("http://evil.example")'}


def test_a_decision_here_refreshes_the_cached_figures(client: Any, reviewer: Any, application: Any) -> None:
    login(client, reviewer)
    assert 'data-testid="decided-30d">0<' in client.get(reverse("review-queue")).content.decode()
    _post_action(
        client, "review-approve", application, expires_on=(timezone.localdate() + timedelta(days=30)).isoformat()
    )
    html = client.get(reverse("review-queue")).content.decode()
    assert 'data-testid="decided-30d">1<' in html and 'data-testid="pending-count">0<' in html

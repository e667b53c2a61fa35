"""Who may review and what a review action may change, the same through the service, the reviewer pages,
the API and bulk decisions: nobody decides their own application, `is_staff` alone is not a reviewer,
a stale version changes nothing, one bad row in a bulk decision is reported without stopping the rest,
and every decision refreshes the dashboard's cached figures."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, Permission
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from access import selectors
from access.errors import NotAllowed
from access.models import Application, ApplicationStatus, AuditEvent, Grant, ReviewerNote
from access.services.applications import application_withdraw
from access.services.audit import RequestMeta
from access.services.grants import grant_revoke
from access.services.reviews import (
    application_add_note,
    application_approve,
    application_reject,
    application_request_info,
    application_start_review,
    applications_bulk_decide,
)
from tests import factories
from tests.access.test_api import bearer
from tests.conftest import login

pytestmark = pytest.mark.django_db
META = RequestMeta(ip="10.0.0.9", user_agent="pytest")


def _apply(email: str, release: Any) -> Any:
    user = factories.make_user(email, full_name=email.split("@")[0].title(), affiliation="Heidelberg University")
    return factories.make_application(user, release, full_name=user.full_name)


def _messages(response: Any) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def _unchanged(application: Any) -> None:
    """Still as submitted: nobody took it, nothing was decided, no grant, no note."""
    row = Application.objects.get(pk=application.pk)
    assert (row.status, row.version, row.reviewer_id, row.decided_by_id) == (
        ApplicationStatus.SUBMITTED,
        application.version,
        None,
        None,
    )
    assert not Grant.objects.filter(application=application).exists()
    assert not ReviewerNote.objects.filter(application=application).exists()
    assert list(AuditEvent.objects.filter(application=application).values_list("action", flat=True)) == [
        "application.submit"
    ]


@pytest.fixture
def staff(db: Any) -> Any:
    """An operator who may open the Django admin but holds no review permission."""
    user = factories.make_user("ops@release.example", full_name="Olga Operator")
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    return user


@pytest.fixture
def own(reviewer: Any, gated_release: Any) -> Any:
    """The reviewer's own application for the gated release."""
    return factories.make_application(reviewer, gated_release, full_name="Rita Reviewer", affiliation="Release team")


# --- Nobody decides their own application -----------------------------------------------------


@pytest.mark.parametrize("persona", ["reviewer", "admin"])
def test_the_service_refuses_every_action_on_ones_own_application(
    request: Any, persona: str, gated_release: Any, second_reviewer: Any
) -> None:
    actor = request.getfixturevalue(persona)
    mine = factories.make_application(actor, gated_release, full_name=actor.get_full_name())
    actions = [
        lambda: application_start_review(application=mine, reviewer=actor, meta=META),
        lambda: application_request_info(application=mine, reviewer=actor, message="Which GPUs?", meta=META),
        lambda: application_approve(application=mine, reviewer=actor, meta=META),
        lambda: application_reject(application=mine, reviewer=actor, reason="No.", meta=META),
        lambda: application_add_note(application=mine, reviewer=actor, body="Looks fine to me.", meta=META),
    ]
    for action in actions:
        with pytest.raises(NotAllowed, match="is your own"):
            action()
    _unchanged(mine)
    # Another reviewer may.
    assert application_approve(application=mine, reviewer=second_reviewer, meta=META).user == actor


def test_the_review_page_refuses_ones_own_application_with_403(client: Any, reviewer: Any, own: Any) -> None:
    login(client, reviewer)
    page = client.get(reverse("review-detail", args=[own.pk]))
    assert page.status_code == 200 and b'data-testid="own-application"' in page.content
    assert reverse("review-approve", args=[own.pk]).encode() not in page.content
    expires_on = (timezone.localdate() + timedelta(days=30)).isoformat()
    posts = {
        "review-start": {},
        "review-approve": {"expires_on": expires_on},
        "review-reject": {"reason": "Not convincing."},
        "review-request-info": {"message": "Which GPUs?"},
    }
    for name, data in posts.items():
        response = client.post(reverse(name, args=[own.pk]), {"expected_version": own.version, **data})
        assert response.status_code == 403, name
        assert b"is your own" in response.content, name
    assert client.post(reverse("review-note", args=[own.pk]), {"body": "Fine."}).status_code == 403
    _unchanged(own)


def test_the_api_refuses_ones_own_application_with_403(reviewer: Any, own: Any) -> None:
    client = bearer(reviewer)
    posts = {
        "review-start": {"expected_version": own.version},
        "review-approve": {},
        "review-reject": {"reason": "Not convincing."},
        "review-request-info": {"message": "Which GPUs?"},
        "review-notes": {"body": "Fine."},
    }
    for name, data in posts.items():
        response = client.post(reverse(f"api:{name}", args=[own.pk]), data, format="json")
        assert response.status_code == 403, name
        assert response.json()["code"] == "not_allowed" and "is your own" in response.json()["detail"], name
    _unchanged(own)


def test_bulk_reports_ones_own_application_and_decides_the_others(reviewer: Any, own: Any, gated_release: Any) -> None:
    others = [_apply(f"o{index}@uni-heidelberg.de", gated_release) for index in range(2)]
    result = applications_bulk_decide(
        application_ids=[own.pk, *(o.pk for o in others)], reviewer=reviewer, decision="approve", meta=META
    )
    assert sorted(result.decided) == sorted(o.pk for o in others)
    assert list(result.conflicts) == [own.pk] and "is your own" in result.conflicts[own.pk]
    _unchanged(own)


def test_bulk_on_the_page_reports_ones_own_application(
    client: Any, reviewer: Any, own: Any, gated_release: Any
) -> None:
    other = _apply("o@uni-heidelberg.de", gated_release)
    login(client, reviewer)
    response = client.post(
        reverse("review-bulk"),
        {"application_ids": [own.pk, other.pk], "decision": "reject", "reason": "Incomplete."},
        follow=True,
    )
    assert response.status_code == 200
    texts = _messages(response)
    assert f"1 application(s) rejected: #{other.pk}." in texts
    assert any(text.startswith(f"#{own.pk} not rejected") and "is your own" in text for text in texts), texts
    assert Application.objects.get(pk=other.pk).status == ApplicationStatus.REJECTED
    _unchanged(own)


def test_bulk_in_the_api_reports_ones_own_application(reviewer: Any, own: Any, gated_release: Any) -> None:
    other = _apply("o@uni-heidelberg.de", gated_release)
    response = bearer(reviewer).post(
        reverse("api:review-bulk"), {"ids": [own.pk, other.pk], "decision": "approve"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["decided"] == [other.pk]
    assert list(response.json()["conflicts"]) == [str(own.pk)]
    assert "is your own" in response.json()["conflicts"][str(own.pk)]
    _unchanged(own)


# --- Bulk decisions with valid and invalid rows -----------------------------------------------


@pytest.fixture
def mixed(reviewer: Any, second_reviewer: Any, gated_release: Any, own: Any) -> dict[str, Any]:
    """Two decidable applications and one of every kind that cannot be decided."""
    valid = [_apply(f"v{index}@uni-heidelberg.de", gated_release) for index in range(2)]
    decided = _apply("decided@uni-heidelberg.de", gated_release)
    application_reject(application=decided, reviewer=second_reviewer, reason="Too vague.", meta=META)
    withdrawn = _apply("withdrawn@uni-heidelberg.de", gated_release)
    application_withdraw(application=withdrawn, applicant=withdrawn.applicant, meta=META)
    asked = _apply("asked@uni-heidelberg.de", gated_release)
    application_request_info(application=asked, reviewer=second_reviewer, message="Which GPUs?", meta=META)
    return {
        "valid": valid,
        "invalid": {"decided": decided, "withdrawn": withdrawn, "asked": asked, "own": own},
        "missing": 2**63 - 1,  # the largest id there can be; no such row
    }


def _statuses(rows: list[Any]) -> list[str]:
    return [Application.objects.get(pk=row.pk).status for row in rows]


def test_bulk_on_the_page_applies_the_valid_rows_and_names_each_invalid_one(
    client: Any, reviewer: Any, mixed: dict[str, Any]
) -> None:
    invalid = mixed["invalid"]
    ids = [row.pk for row in mixed["valid"]] + [row.pk for row in invalid.values()] + [mixed["missing"]]
    login(client, reviewer)
    response = client.post(reverse("review-bulk"), {"application_ids": ids, "decision": "approve"}, follow=True)
    assert response.status_code == 200
    texts = _messages(response)
    first, second = mixed["valid"]
    assert f"2 application(s) approved: #{first.pk}, #{second.pk}." in texts
    failures = {text.split(" ", 1)[0]: text for text in texts if " not approved: " in text}
    assert set(failures) == {f"#{row.pk}" for row in invalid.values()} | {f"#{mixed['missing']}"}
    assert "already rejected by Rob Reviewer" in failures[f"#{invalid['decided'].pk}"]
    assert "'Withdrawn'" in failures[f"#{invalid['withdrawn'].pk}"]
    assert "'Needs information'" in failures[f"#{invalid['asked'].pk}"]
    assert "is your own" in failures[f"#{invalid['own'].pk}"]
    assert "does not exist" in failures[f"#{mixed['missing']}"]
    assert _statuses(mixed["valid"]) == [ApplicationStatus.APPROVED] * 2
    assert _statuses(list(invalid.values())) == [
        ApplicationStatus.REJECTED,
        ApplicationStatus.WITHDRAWN,
        ApplicationStatus.NEEDS_INFO,
        ApplicationStatus.SUBMITTED,
    ]
    assert Grant.objects.count() == 2


@pytest.mark.parametrize("bad_id", ["-5", "0", str(2**63), "99999999999999999999999"])
def test_bulk_on_the_page_survives_ids_no_row_can_have(
    client: Any, reviewer: Any, gated_release: Any, bad_id: str
) -> None:
    valid = _apply("v@uni-heidelberg.de", gated_release)
    login(client, reviewer)
    response = client.post(
        reverse("review-bulk"), {"application_ids": [str(valid.pk), bad_id], "decision": "approve"}, follow=True
    )
    # Decided what can be decided, and named the id no row can have.
    assert response.status_code == 200
    assert Application.objects.get(pk=valid.pk).status == ApplicationStatus.APPROVED
    assert f"#{bad_id} not approved: Application #{bad_id} does not exist." in _messages(response)


def test_bulk_in_the_api_applies_the_valid_rows_and_names_each_invalid_one(
    reviewer: Any, mixed: dict[str, Any]
) -> None:
    invalid = mixed["invalid"]
    ids = [row.pk for row in mixed["valid"]] + [row.pk for row in invalid.values()] + [mixed["missing"]]
    response = bearer(reviewer).post(
        reverse("api:review-bulk"), {"ids": ids, "decision": "reject", "reason": "Dear {name}: no."}, format="json"
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert sorted(body["decided"]) == sorted(row.pk for row in mixed["valid"])
    assert set(body["conflicts"]) == {str(row.pk) for row in invalid.values()} | {str(mixed["missing"])}
    assert "is your own" in body["conflicts"][str(invalid["own"].pk)]
    assert "does not exist" in body["conflicts"][str(mixed["missing"])]
    for row in mixed["valid"]:
        row.refresh_from_db()
        assert row.status == ApplicationStatus.REJECTED and row.rejection_reason == f"Dear {row.full_name}: no."
    assert _statuses(list(invalid.values())) == [
        ApplicationStatus.REJECTED,
        ApplicationStatus.WITHDRAWN,
        ApplicationStatus.NEEDS_INFO,
        ApplicationStatus.SUBMITTED,
    ]


def test_bulk_in_the_api_counts_a_repeated_id_once(reviewer: Any, gated_release: Any) -> None:
    row = _apply("v@uni-heidelberg.de", gated_release)
    response = bearer(reviewer).post(
        reverse("api:review-bulk"), {"ids": [row.pk, row.pk], "decision": "approve"}, format="json"
    )
    assert response.status_code == 200 and response.json() == {"decided": [row.pk], "conflicts": {}}
    assert Grant.objects.filter(application=row).count() == 1


# --- Start review with the version the reviewer saw -------------------------------------------


def test_api_start_review_with_a_stale_version_is_409_and_changes_nothing(reviewer: Any, application: Any) -> None:
    client = bearer(reviewer)
    stale = client.post(
        reverse("api:review-start", args=[application.pk]),
        {"expected_version": application.version + 1},
        format="json",
    )
    assert stale.status_code == 409
    assert stale.json()["code"] == "conflict" and "changed since you opened it" in stale.json()["detail"]
    _unchanged(application)

    fresh = client.post(
        reverse("api:review-start", args=[application.pk]), {"expected_version": application.version}, format="json"
    )
    assert fresh.status_code == 200, fresh.json()
    assert fresh.json()["status"] == "in_review" and fresh.json()["version"] == application.version + 1
    application.refresh_from_db()
    assert application.reviewer == reviewer


def test_api_start_review_after_another_reviewer_took_it_is_409(
    reviewer: Any, second_reviewer: Any, application: Any
) -> None:
    seen = bearer(reviewer).get(reverse("api:review-detail", args=[application.pk])).json()["version"]
    application_start_review(application=application, reviewer=second_reviewer, meta=META)
    late = bearer(reviewer).post(
        reverse("api:review-start", args=[application.pk]), {"expected_version": seen}, format="json"
    )
    assert late.status_code == 409
    application.refresh_from_db()
    assert application.reviewer == second_reviewer


def test_api_start_review_rejects_a_malformed_version(reviewer: Any, application: Any) -> None:
    client = bearer(reviewer)
    for bad in (0, -1, "one", 2**40):
        response = client.post(
            reverse("api:review-start", args=[application.pk]), {"expected_version": bad}, format="json"
        )
        assert response.status_code == 400 and list(response.json()["errors"]) == ["expected_version"], bad
    _unchanged(application)


# --- The dashboard's cached figures -----------------------------------------------------------


def _decided_30d(client: Any) -> str:
    html = client.get(reverse("review-queue")).content.decode()
    return html.split('data-testid="decided-30d">', 1)[1].split("<", 1)[0]


def test_an_api_decision_refreshes_the_dashboard_at_once(client: Any, reviewer: Any, gated_release: Any) -> None:
    rows = [_apply(f"c{index}@uni-heidelberg.de", gated_release) for index in range(3)]
    login(client, reviewer)
    assert _decided_30d(client) == "0"
    assert cache.get(selectors.REVIEW_METRICS_CACHE_KEY) is not None  # the page cached its figures
    api = bearer(reviewer)
    assert api.post(reverse("api:review-approve", args=[rows[0].pk]), {}, format="json").status_code == 200
    assert _decided_30d(client) == "1"
    rejected = api.post(reverse("api:review-reject", args=[rows[1].pk]), {"reason": "No."}, format="json")
    assert rejected.status_code == 200
    assert _decided_30d(client) == "2"
    bulk = api.post(reverse("api:review-bulk"), {"ids": [rows[2].pk], "decision": "approve"}, format="json")
    assert bulk.json()["decided"] == [rows[2].pk]
    assert _decided_30d(client) == "3"
    assert selectors.review_metrics_cached().decided_30d == 3


# --- Staff is not a reviewer ------------------------------------------------------------------


def test_is_reviewer_is_the_permission_not_staff(
    anonymous: Any, applicant: Any, reviewer: Any, admin: Any, staff: Any
) -> None:
    assert not selectors.is_reviewer(anonymous) and not selectors.is_reviewer(AnonymousUser())
    assert not selectors.is_reviewer(None)
    assert not selectors.is_reviewer(applicant)
    assert not selectors.is_reviewer(staff)
    assert selectors.is_reviewer(reviewer) and selectors.is_reviewer(admin)
    # The permission itself, without the group, is enough; staff or not.
    staff.user_permissions.add(Permission.objects.get(codename="review_application"))
    staff = type(staff).objects.get(pk=staff.pk)  # a fresh row: permissions are cached on the instance
    assert selectors.is_reviewer(staff)
    # A disabled account reviews nothing.
    reviewer.is_active = False
    assert not selectors.is_reviewer(reviewer)


def test_staff_gets_403_on_the_review_pages(client: Any, staff: Any, application: Any) -> None:
    login(client, staff)
    for url in (reverse("review-queue"), reverse("review-detail", args=[application.pk]), reverse("review-grants")):
        assert client.get(url).status_code == 403, url
    response = client.post(
        reverse("review-approve", args=[application.pk]),
        {"expected_version": application.version, "expires_on": (timezone.localdate() + timedelta(days=9)).isoformat()},
    )
    assert response.status_code == 403
    assert (
        client.post(reverse("review-bulk"), {"application_ids": [application.pk], "decision": "approve"}).status_code
        == 403
    )
    assert reverse("review-queue").encode() not in client.get(reverse("my-applications")).content  # no nav link
    _unchanged(application)


def test_staff_gets_403_from_the_review_api(staff: Any, application: Any) -> None:
    client = bearer(staff)
    assert client.get(reverse("api:review-queue")).status_code == 403
    assert client.get(reverse("api:review-detail", args=[application.pk])).status_code == 403
    assert client.get(reverse("api:review-metrics")).status_code == 403
    approve = client.post(reverse("api:review-approve", args=[application.pk]), {}, format="json")
    assert approve.status_code == 403 and approve.json()["code"] == "not_allowed"
    bulk = client.post(reverse("api:review-bulk"), {"ids": [application.pk], "decision": "approve"}, format="json")
    assert bulk.status_code == 403
    _unchanged(application)


def test_staff_cannot_decide_or_revoke_through_the_services(
    staff: Any, reviewer: Any, application: Any, other_applicant: Any, gated_release: Any
) -> None:
    with pytest.raises(NotAllowed):
        application_approve(application=application, reviewer=staff, meta=META)
    with pytest.raises(NotAllowed):
        applications_bulk_decide(application_ids=[application.pk], reviewer=staff, decision="approve", meta=META)
    _unchanged(application)
    grant = application_approve(
        application=factories.make_application(other_applicant, gated_release), reviewer=reviewer, meta=META
    )
    with pytest.raises(NotAllowed):
        grant_revoke(grant=grant, actor=staff, reason="Because.", meta=META)
    grant.refresh_from_db()
    assert grant.status == "active"

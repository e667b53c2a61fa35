"""The REST API end to end: API-key and session auth, the applicant and reviewer flows, errors."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from access.models import ApiKey, Application, ApplicationStatus, Grant, LicenseVersion
from access.services.api_keys import api_key_create
from access.services.audit import RequestMeta
from access.services.grants import grant_revoke
from access.services.reviews import application_add_note, application_approve, application_request_info
from tests import factories

pytestmark = pytest.mark.django_db
META = RequestMeta(ip="10.0.0.9", user_agent="pytest")


def bearer(user: Any, name: str = "test") -> APIClient:
    """A client authenticated the way scripts are: `Authorization: Bearer orp_…`."""
    _, raw = api_key_create(user=user, name=name)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def session(user: Any) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def application_body(release_row: Any, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "release": release_row.slug,
        "full_name": "Alice Adams",
        "affiliation": "Heidelberg University",
        "organization_type": "academic",
        "role": "PhD student",
        "country": "de",
        "research_purpose": factories.RESEARCH_PURPOSE,
        "intended_use": "Evaluation only.",
        "publications": ["https://doi.org/10.1234/calibration.2024", "https://arxiv.org/abs/2205.01068"],
        "license_version_id": release_row.license.current_version.pk,
        "accept_license": True,
        "non_commercial_attested": True,
    }
    body.update(overrides)
    return body


def url(name: str, *args: Any) -> str:
    return reverse(f"api:{name}", args=args)


# --- Catalog ----------------------------------------------------------------------------------


def test_catalog_is_public_and_nests_cards(gated_release: Any, open_release: Any) -> None:
    client = APIClient()
    response = client.get(url("releases"))
    assert response.status_code == 200
    by_slug = {row["slug"]: row for row in response.json()["results"]}
    assert set(by_slug) == {"opt-175b", "opt-125m"}
    gated = by_slug["opt-175b"]
    assert gated["access_tier"] == "gated" and by_slug["opt-125m"]["access_tier"] == "open"
    assert gated["license"]["current_version_id"] == gated_release.license.current_version.pk
    assert gated["license"]["current_version"] == "1.0"
    assert gated["architecture"]["n_heads"] == 12 and gated["architecture"]["head_dim"] == 64
    assert gated["architecture"]["family"] == "opt"
    assert gated["model_card"]["model_type"] == "decoder-only transformer"
    assert gated["data_card"]["datasets"] == [{"name": "The Pile", "share": 1.0}]

    detail = client.get(url("release", "opt-175b")).json()
    assert detail["name"] == "OPT-175B" and detail["family"]["slug"] == "opt"
    families = client.get(url("families")).json()["results"]
    assert families[0]["slug"] == "opt" and set(families[0]["releases"]) == {"opt-175b", "opt-125m"}


def test_unknown_release_is_a_json_404() -> None:
    response = APIClient().get(url("release", "gpt-9"))
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "detail": "No such release."}


def test_unlisted_release_is_hidden(gated_release: Any) -> None:
    gated_release.is_listed = False
    gated_release.save(update_fields=["is_listed"])
    client = APIClient()
    assert client.get(url("releases")).json()["count"] == 0
    assert client.get(url("release", gated_release.slug)).status_code == 404


def test_pagination_honours_page_size_and_caps_it(gated_release: Any, open_release: Any) -> None:
    client = APIClient()
    first = client.get(url("releases"), {"page_size": 1}).json()
    assert first["count"] == 2 and len(first["results"]) == 1 and first["next"]
    assert client.get(url("releases"), {"page": 99}).status_code == 404
    assert len(client.get(url("releases"), {"page_size": 10_000}).json()["results"]) == 2


def test_license_text_and_accept(applicant: Any, open_release: Any) -> None:
    license_text = APIClient().get(url("release-license", open_release.slug)).json()
    current = open_release.license.current_version
    assert license_text["version_id"] == current.pk and license_text["text"] == current.text

    client = bearer(applicant)
    assert client.get(url("release-access", open_release.slug)).json()["reason"] == "license_not_accepted"
    accepted = client.post(
        url("release-license-accept", open_release.slug), {"license_version_id": current.pk}, format="json"
    )
    assert accepted.status_code == 201 and accepted.json()["license_version"] == "1.0"
    assert client.get(url("release-access", open_release.slug)).json()["allowed"] is True

    # A new version makes the old acceptance stale; accepting the old id is a conflict, not a success.
    LicenseVersion.objects.create(
        license=open_release.license, version="2.0", text="v2", published_at=timezone.now() + timedelta(seconds=1)
    )
    assert client.get(url("release-access", open_release.slug)).json()["reason"] == "license_changed"
    stale = client.post(
        url("release-license-accept", open_release.slug), {"license_version_id": current.pk}, format="json"
    )
    assert stale.status_code == 409
    assert stale.json()["code"] == "conflict" and "version 2.0" in stale.json()["detail"]
    assert stale.json()["errors"] == {"license_version": [stale.json()["detail"]]}


def test_license_accept_needs_a_signed_in_user_and_an_integer(open_release: Any, applicant: Any) -> None:
    current = open_release.license.current_version
    anonymous = APIClient().post(url("release-license-accept", open_release.slug), {"license_version_id": current.pk})
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "not_authenticated"
    wrong_type = bearer(applicant).post(
        url("release-license-accept", open_release.slug), {"license_version_id": "one"}, format="json"
    )
    assert wrong_type.status_code == 400
    assert list(wrong_type.json()["errors"]) == ["license_version_id"]


# --- Applicant flow ---------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["api_key", "session"])
def test_applicant_flow(auth: str, applicant: Any, reviewer: Any, gated_release: Any) -> None:
    client = bearer(applicant) if auth == "api_key" else session(applicant)

    created = client.post(url("applications"), application_body(gated_release), format="json")
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["status"] == "submitted" and body["release"] == "opt-175b" and body["country"] == "DE"
    assert body["publications"] == ["doi:10.1234/calibration.2024", "https://arxiv.org/abs/2205.01068"]
    application = Application.objects.get(pk=body["id"])
    assert application.applicant == applicant and application.submitted_ip == "127.0.0.1"

    listed = client.get(url("applications")).json()
    assert [row["id"] for row in listed["results"]] == [application.pk]
    assert client.get(url("applications"), {"status": "approved"}).json()["count"] == 0
    assert client.get(url("applications"), {"status": "submitted"}).json()["count"] == 1
    assert client.get(url("application", application.pk)).json()["version"] == 1

    application_add_note(application=application, reviewer=reviewer, body="Internal: check the lab.", meta=META)
    application_request_info(application=application, reviewer=reviewer, message="Which benchmarks?", meta=META)
    thread = client.get(url("application-messages", application.pk)).json()
    assert [(m["kind"], m["body"], m["author"]) for m in thread] == [("info_request", "Which benchmarks?", "Reviewer")]
    assert "Internal" not in str(client.get(url("application", application.pk)).json())

    answered = client.post(url("application-answer", application.pk), {"message": "MMLU."}, format="json")
    assert answered.status_code == 200 and answered.json()["status"] == "in_review"
    assert [m["kind"] for m in client.get(url("application-messages", application.pk)).json()] == [
        "info_request",
        "applicant_reply",
    ]
    again = client.post(url("application-answer", application.pk), {"message": "More."}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "conflict"

    withdrawn = client.post(url("application-withdraw", application.pk))
    assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "withdrawn"
    assert client.post(url("application-withdraw", application.pk)).status_code == 409


def test_session_post_needs_csrf(applicant: Any, gated_release: Any) -> None:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(applicant)
    response = client.post(url("applications"), application_body(gated_release), format="json")
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]
    assert not Application.objects.exists()


def test_serializer_errors_name_each_field(applicant: Any, gated_release: Any) -> None:
    client = bearer(applicant)
    body = application_body(
        gated_release,
        license_version_id="abc",
        publications="10.1/x",
        organization_type="company",
        full_name="x" * 201,
    )
    del body["role"]
    response = client.post(url("applications"), body, format="json")
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert set(errors) == {"license_version_id", "publications", "organization_type", "full_name", "role"}
    assert response.json()["code"] == "invalid" and "role" in response.json()["detail"]

    too_many = client.post(
        url("applications"),
        application_body(gated_release, publications=[f"10.1234/{i}" for i in range(21)]),
        format="json",
    )
    assert too_many.status_code == 400 and "publications" in too_many.json()["errors"]
    nested = client.post(url("applications"), application_body(gated_release, publications=[{"doi": 1}]), format="json")
    assert nested.status_code == 400 and "publications.0" in nested.json()["errors"]
    assert not Application.objects.exists()


def test_service_errors_are_400_with_field_errors(applicant: Any, gated_release: Any) -> None:
    response = bearer(applicant).post(
        url("applications"),
        application_body(gated_release, research_purpose="Too short.", country="XX", accept_license=False),
        format="json",
    )
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert set(errors) == {"research_purpose", "country", "accept_license"}
    assert "at least 200 characters" in errors["research_purpose"][0]
    assert response.json()["detail"].startswith("Some fields are not valid")


def test_unknown_release_slug_is_a_field_error(applicant: Any, gated_release: Any) -> None:
    response = bearer(applicant).post(
        url("applications"), application_body(gated_release, release="nope"), format="json"
    )
    assert response.status_code == 400 and list(response.json()["errors"]) == ["release"]


def test_malformed_json_is_a_400(applicant: Any) -> None:
    response = bearer(applicant).post(url("applications"), data="{not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["code"] == "parse_error"


def test_duplicate_application_is_409(applicant: Any, gated_release: Any) -> None:
    client = bearer(applicant)
    assert client.post(url("applications"), application_body(gated_release), format="json").status_code == 201
    duplicate = client.post(url("applications"), application_body(gated_release), format="json")
    assert duplicate.status_code == 409
    assert duplicate.json()["code"] == "conflict" and "already have an open application" in duplicate.json()["detail"]


def test_unverified_applicant_gets_403(gated_release: Any) -> None:
    unverified = factories.make_user("new@uni.example", verified=False)
    response = bearer(unverified).post(url("applications"), application_body(gated_release), format="json")
    assert response.status_code == 403 and response.json()["code"] == "not_allowed"


def test_other_applicants_application_is_404(application: Any, other_applicant: Any, reviewer: Any) -> None:
    for user in (other_applicant, reviewer):  # the applicant endpoints only ever show one's own
        client = bearer(user)
        for name in ("application", "application-messages"):
            assert client.get(url(name, application.pk)).status_code == 404
        assert client.post(url("application-withdraw", application.pk)).status_code == 404
    application.refresh_from_db()
    assert application.status == ApplicationStatus.SUBMITTED


# --- Review -----------------------------------------------------------------------------------


def test_review_queue_filters(reviewer: Any, applicant: Any, other_applicant: Any, gated_release: Any) -> None:
    alice = factories.make_application(applicant, gated_release)
    bob = factories.make_application(
        other_applicant,
        gated_release,
        full_name="Bob Brown",
        affiliation="ETH Zurich",
        organization_type="industry_lab",
        country="CH",
    )
    third = factories.make_user("carol@mit.edu", full_name="Carol", affiliation="MIT")
    carol = factories.make_application(third, gated_release, full_name="Carol", affiliation="MIT", country="US")
    application_request_info(application=carol, reviewer=reviewer, message="?", meta=META)
    client = bearer(reviewer)

    def ids(**query: Any) -> list[int]:
        response = client.get(url("review-queue"), query)
        assert response.status_code == 200, response.json()
        return [row["id"] for row in response.json()["results"]]

    assert ids() == [alice.pk, bob.pk]  # pending only, oldest first
    assert ids(status="needs_info") == [carol.pk]
    assert ids(status=["needs_info", "submitted"]) == [alice.pk, bob.pk, carol.pk]
    assert ids(organization_type="industry_lab") == [bob.pk]
    assert ids(country="ch") == [bob.pk]
    assert ids(search="heidelberg") == [alice.pk]
    assert ids(release="opt-175b") == [alice.pk, bob.pk]
    assert ids(release="other") == []
    today = timezone.now().date()
    assert ids(submitted_from=today.isoformat(), submitted_to=today.isoformat()) == [alice.pk, bob.pk]
    assert ids(submitted_to=(today - timedelta(days=1)).isoformat()) == []

    bad = client.get(url("review-queue"), {"status": "lost", "submitted_from": "yesterday"})
    assert bad.status_code == 400 and set(bad.json()["errors"]) == {"status", "submitted_from"}
    backwards = client.get(url("review-queue"), {"submitted_from": "2024-02-01", "submitted_to": "2024-01-01"})
    assert backwards.status_code == 400 and list(backwards.json()["errors"]) == ["submitted_to"]


def test_review_detail_has_notes_thread_and_signals(reviewer: Any, application: Any) -> None:
    client = bearer(reviewer)
    assert client.post(url("review-notes", application.pk), {"body": "Looks fine."}, format="json").status_code == 201
    assert client.post(url("review-notes", application.pk), {"body": "   "}, format="json").status_code == 400
    detail = client.get(url("review-detail", application.pk)).json()
    assert [note["body"] for note in detail["notes"]] == ["Looks fine."]
    assert detail["notes"][0]["author"] == "Rita Reviewer"
    assert detail["email"] == "alice@uni-heidelberg.de" and isinstance(detail["signals"], list)
    assert client.get(url("review-detail", 10**9)).status_code == 404


def test_review_decisions(reviewer: Any, application: Any, applicant: Any) -> None:
    client = bearer(reviewer)
    started = client.post(url("review-start", application.pk))
    assert started.status_code == 200 and started.json()["status"] == "in_review" and started.json()["reviewer"]
    asked = client.post(url("review-request-info", application.pk), {"message": "Which GPU?"}, format="json")
    assert asked.status_code == 200 and asked.json()["status"] == "needs_info"
    assert asked.json()["messages"][0]["author"] == "Rita Reviewer"
    assert client.post(url("review-approve", application.pk), {}, format="json").status_code == 409

    bearer(applicant).post(url("application-answer", application.pk), {"message": "A100s."}, format="json")
    expires = timezone.now() + timedelta(days=90)
    approved = client.post(
        url("review-approve", application.pk), {"expires_at": expires.isoformat(), "expected_version": 4}, format="json"
    )
    assert approved.status_code == 200, approved.json()
    assert approved.json()["application"]["status"] == "approved"
    grant = Grant.objects.get(application=application)
    assert approved.json()["grant"]["id"] == grant.pk and approved.json()["grant"]["active"] is True
    assert abs((grant.expires_at - expires).total_seconds()) < 1


def test_approve_validates_input(reviewer: Any, application: Any) -> None:
    client = bearer(reviewer)
    past = client.post(url("review-approve", application.pk), {"expires_at": "2001-01-01T00:00:00Z"}, format="json")
    assert past.status_code == 400 and list(past.json()["errors"]) == ["expires_at"]
    garbage = client.post(
        url("review-approve", application.pk), {"expires_at": "soon", "expected_version": 2**40}, format="json"
    )
    assert garbage.status_code == 400 and set(garbage.json()["errors"]) == {"expires_at", "expected_version"}
    assert client.post(url("review-reject", application.pk), {"reason": ""}, format="json").status_code == 400
    application.refresh_from_db()
    assert application.status == ApplicationStatus.SUBMITTED


def test_second_reviewer_gets_409(reviewer: Any, second_reviewer: Any, application: Any) -> None:
    seen = bearer(second_reviewer).get(url("review-detail", application.pk)).json()["version"]
    assert bearer(reviewer).post(url("review-approve", application.pk), {}, format="json").status_code == 200
    late = bearer(second_reviewer).post(
        url("review-reject", application.pk), {"reason": "No.", "expected_version": seen}, format="json"
    )
    assert late.status_code == 409
    assert late.json()["code"] == "conflict" and "already approved by Rita Reviewer" in late.json()["detail"]
    application.refresh_from_db()
    assert application.status == ApplicationStatus.APPROVED and application.decided_by == reviewer


def test_stale_expected_version_is_409(reviewer: Any, application: Any) -> None:
    client = bearer(reviewer)
    client.post(url("review-start", application.pk))
    stale = client.post(url("review-approve", application.pk), {"expected_version": 1}, format="json")
    assert stale.status_code == 409 and "changed since you opened it" in stale.json()["detail"]


def test_bulk_decide(reviewer: Any, applicant: Any, other_applicant: Any, gated_release: Any) -> None:
    first = factories.make_application(applicant, gated_release)
    second = factories.make_application(other_applicant, gated_release)
    application_approve(application=second, reviewer=reviewer, meta=META)
    client = bearer(reviewer)
    response = client.post(
        url("review-bulk"),
        {"ids": [first.pk, second.pk, 999_999], "decision": "reject", "reason": "Incomplete."},
        format="json",
    )
    assert response.status_code == 200
    assert response.json()["decided"] == [first.pk]
    assert set(response.json()["conflicts"]) == {str(second.pk), "999999"}
    first.refresh_from_db()
    assert first.status == ApplicationStatus.REJECTED and first.rejection_reason == "Incomplete."

    no_reason = client.post(url("review-bulk"), {"ids": [first.pk], "decision": "reject"}, format="json")
    assert no_reason.status_code == 400 and list(no_reason.json()["errors"]) == ["reason"]
    bad = client.post(url("review-bulk"), {"ids": ["x"], "decision": "maybe"}, format="json")
    assert bad.status_code == 400 and set(bad.json()["errors"]) == {"ids.0", "decision"}
    assert client.post(url("review-bulk"), {"ids": [], "decision": "approve"}, format="json").status_code == 400


def test_metrics(reviewer: Any, application: Any) -> None:
    client = bearer(reviewer)
    assert client.get(url("review-metrics")).json()["pending"] == 1
    application_approve(application=application, reviewer=reviewer, meta=META)
    metrics = client.get(url("review-metrics")).json()
    assert metrics["pending"] == 0 and metrics["decided_30d"] == 1 and metrics["median_hours_30d"] is not None
    assert len(metrics["weekly"]) == 12 and metrics["weekly"][-1]["decisions"] == 1


# --- Grants and the access check --------------------------------------------------------------


def test_access_check_before_and_after_approval_and_revocation(
    applicant: Any, reviewer: Any, gated_release: Any
) -> None:
    client = bearer(applicant)
    before = client.get(url("release-access", gated_release.slug)).json()
    assert before == {
        "allowed": False,
        "reason": "no_grant",
        "message": "OPT-175B is gated: apply for access first.",
        "grant_expires_at": None,
    }
    created = client.post(url("applications"), application_body(gated_release), format="json").json()
    assert client.get(url("release-access", gated_release.slug)).json()["reason"] == "no_grant"

    bearer(reviewer).post(url("review-approve", created["id"]), {}, format="json")
    after = client.get(url("release-access", gated_release.slug)).json()
    grant = Grant.objects.get(user=applicant)
    assert after["allowed"] is True and after["reason"] == "ok"
    assert after["grant_expires_at"] == grant.expires_at.isoformat().replace("+00:00", "Z")
    grants = client.get(url("grants")).json()["results"]
    assert [(g["id"], g["state"], g["active"]) for g in grants] == [(grant.pk, "active", True)]

    grant_revoke(grant=grant, actor=reviewer, reason="Terms breached.", meta=META)
    revoked = client.get(url("release-access", gated_release.slug)).json()
    assert revoked["allowed"] is False and revoked["reason"] == "grant_revoked"
    assert [(g["state"], g["active"]) for g in client.get(url("grants")).json()["results"]] == [("revoked", False)]


def test_expired_grant_is_not_active(applicant: Any, reviewer: Any, application: Any) -> None:
    grant = application_approve(application=application, reviewer=reviewer, meta=META)
    Grant.objects.filter(pk=grant.pk).update(
        starts_at=timezone.now() - timedelta(days=10), expires_at=timezone.now() - timedelta(days=1)
    )
    client = bearer(applicant)
    assert [(g["state"], g["active"]) for g in client.get(url("grants")).json()["results"]] == [("expired", False)]
    assert client.get(url("release-access", application.release.slug)).json()["reason"] == "grant_expired"


def test_grants_are_only_ones_own(applicant: Any, other_applicant: Any, reviewer: Any, application: Any) -> None:
    application_approve(application=application, reviewer=reviewer, meta=META)
    assert bearer(other_applicant).get(url("grants")).json()["count"] == 0
    assert bearer(applicant).get(url("grants")).json()["count"] == 1


# --- API keys ---------------------------------------------------------------------------------


def test_api_key_lifecycle(applicant: Any, other_applicant: Any) -> None:
    client = session(applicant)
    created = client.post(url("api-keys"), {"name": "laptop"}, format="json")
    assert created.status_code == 201
    raw = created.json()["key"]
    assert raw.startswith("orp_") and created.json()["key_prefix"] == raw[:10]
    assert ApiKey.objects.get(pk=created.json()["id"]).key_hash == ApiKey.hash(raw)

    with_key = APIClient()
    with_key.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    listed = with_key.get(url("api-keys")).json()["results"]
    assert [(k["name"], k["usable"]) for k in listed] == [("laptop", True)]
    assert "key" not in listed[0] and raw not in str(listed)
    assert ApiKey.objects.get(pk=created.json()["id"]).last_used_at is not None

    # Someone else's key is not there for them.
    assert bearer(other_applicant).post(url("api-key-revoke", created.json()["id"])).status_code == 404
    assert with_key.get(url("api-keys")).status_code == 200

    revoked = client.post(url("api-key-revoke", created.json()["id"]))
    assert revoked.status_code == 200 and revoked.json()["usable"] is False and revoked.json()["revoked_at"]
    refused = with_key.get(url("api-keys"))
    assert refused.status_code == 401
    assert refused.json() == {
        "code": "authentication_failed",
        "detail": "This API key is revoked or expired. Create a new one.",
    }


def test_api_key_create_validation(applicant: Any) -> None:
    client = session(applicant)
    blank = client.post(url("api-keys"), {"name": "   "}, format="json")
    assert blank.status_code == 400 and list(blank.json()["errors"]) == ["name"]
    past = client.post(url("api-keys"), {"name": "old", "expires_at": "2000-01-01T00:00:00Z"}, format="json")
    assert past.status_code == 400 and past.json()["errors"] == {"expires_at": ["The expiry must be in the future."]}
    assert not ApiKey.objects.exists()


def test_unknown_key_is_401(gated_release: Any) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer orp_not-a-real-key")
    response = client.get(url("releases"))
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Bearer"
    assert response.json()["detail"].startswith("Unknown API key")


# --- The schema -------------------------------------------------------------------------------


def test_schema_is_valid_without_warnings(tmp_path: Any) -> None:
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    text = target.read_text()
    for operation_id in (
        "applications_create",
        "review_applications_approve",
        "releases_access_check",
        "api_keys_revoke",
    ):
        assert f"operationId: {operation_id}\n" in text


def test_schema_is_served() -> None:
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/api/v1/releases/{slug}/access/" in paths and "/api/v1/review/bulk/" in paths

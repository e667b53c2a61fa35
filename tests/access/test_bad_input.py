"""Bad input never gives a 500: bodies too large or too deep for the API, out-of-range dates and ids in
filters and exports, and text longer than the API allows on the web forms."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from access.limits import MAX_NAME, MAX_PUBLICATION, MAX_TEXT
from access.models import Application, ApplicationStatus
from tests.access.test_api import application_body, bearer, url

pytestmark = pytest.mark.django_db


def test_deeply_nested_json_is_a_400_in_the_error_shape(applicant: Any) -> None:
    body = "[" * 100_000 + "]" * 100_000
    response = bearer(applicant).post(url("applications"), data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error" and "nests too deeply" in response.json()["detail"]


def test_moderately_nested_json_beyond_the_bound_is_a_400(applicant: Any, gated_release: Any) -> None:
    nested: Any = "x"
    for _ in range(40):
        nested = [nested]
    response = bearer(applicant).post(
        url("applications"), application_body(gated_release, publications=nested), format="json"
    )
    assert response.status_code == 400 and response.json()["code"] == "parse_error"


def test_oversized_json_is_a_413_in_the_error_shape(applicant: Any, gated_release: Any, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    body = application_body(gated_release, research_purpose="x" * 20_000)
    response = bearer(applicant).post(url("applications"), body, format="json")
    assert response.status_code == 413
    assert response.json()["code"] == "too_large" and "10000 bytes" in response.json()["detail"]


def test_form_encoded_body_is_a_415_in_the_error_shape(applicant: Any, gated_release: Any) -> None:
    response = bearer(applicant).post(url("applications"), {"release": gated_release.slug})
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"


# --- Filters and exports: out-of-range dates and ids ------------------------------------------

BAD_DATES = ["99999-01-01", "0000-12-31", "9999-12-31", "0001-01-01", "2024-13-01", "-1-01-01"]
BAD_IDS = ["99999999999999999999999", "-1", "0", "1e9", "12abc"]


@pytest.mark.parametrize("value", BAD_DATES)
@pytest.mark.parametrize("field", ["submitted_from", "submitted_to"])
def test_queue_filter_dates_never_500(client: Any, reviewer: Any, field: str, value: str) -> None:
    client.force_login(reviewer)
    response = client.get(reverse("review-queue"), {field: value})
    assert response.status_code in (200, 400)


@pytest.mark.parametrize("value", BAD_DATES)
@pytest.mark.parametrize("field", ["submitted_from", "submitted_to"])
def test_api_queue_filter_dates_never_500(reviewer: Any, field: str, value: str) -> None:
    response = bearer(reviewer).get(url("review-queue"), {field: value})
    assert response.status_code in (200, 400)
    if response.status_code == 400:
        assert response.json()["code"] == "invalid"


@pytest.mark.parametrize("value", BAD_DATES)
@pytest.mark.parametrize("field", ["created_from", "created_to"])
def test_audit_csv_dates_are_checked_before_streaming(client: Any, reviewer: Any, field: str, value: str) -> None:
    client.force_login(reviewer)
    response = client.get(reverse("review-audit-csv"), {field: value})
    assert response.status_code in (200, 400)
    if response.status_code == 200:
        b"".join(response.streaming_content)


@pytest.mark.parametrize("value", BAD_IDS)
def test_audit_csv_application_ids_are_checked_before_streaming(client: Any, reviewer: Any, value: str) -> None:
    client.force_login(reviewer)
    response = client.get(reverse("review-audit-csv"), {"application": value})
    assert response.status_code == 400
    assert b"application" in response.content


@pytest.mark.parametrize(
    "params",
    [{"page": "99999999999999999999999"}, {"page": "-1"}, {"q": "x" * 5000}, {"status": "nope"}, {"release": "\x00"}],
)
def test_grants_filters_never_500(client: Any, reviewer: Any, params: dict[str, str]) -> None:
    client.force_login(reviewer)
    response = client.get(reverse("review-grants"), params)
    assert response.status_code in (200, 400)


@pytest.mark.parametrize(
    "params",
    [
        {"page": "99999999999999999999999"},
        {"per_page": "99999999999999999999999"},
        {"status": "nope"},
        {"q": "\x00"},
        {"country": "ZZ"},
    ],
)
def test_queue_filters_never_500(client: Any, reviewer: Any, params: dict[str, str]) -> None:
    client.force_login(reviewer)
    response = client.get(reverse("review-queue"), params)
    assert response.status_code in (200, 400)


@pytest.mark.parametrize("value", BAD_IDS)
def test_api_grants_and_queue_ids_never_500(reviewer: Any, value: str) -> None:
    for name, params in (
        ("grants", {"page": value}),
        ("review-queue", {"page": value}),
        ("review-queue", {"page_size": value}),
    ):
        response = bearer(reviewer).get(url(name), params)
        assert response.status_code in (200, 400, 404), (name, params)


@pytest.mark.parametrize("name", ["review-detail", "review-application-audit-csv"])
def test_huge_path_ids_are_404(client: Any, reviewer: Any, name: str) -> None:
    client.force_login(reviewer)
    assert client.get(reverse(name, args=[99999999999999999999999])).status_code == 404


def test_grant_renew_with_huge_id_is_404(client: Any, applicant: Any) -> None:
    client.force_login(applicant)
    assert client.get(reverse("grant-renew", args=[99999999999999999999999])).status_code == 404
    assert client.get(reverse("application-detail", args=[99999999999999999999999])).status_code == 404


# --- Web forms take no more text than the API ---------------------------------------------------


def test_application_form_text_has_the_api_limits(client: Any, applicant: Any, gated_release: Any) -> None:
    from tests.access.test_apply import _apply_url, _form_data

    client.force_login(applicant)
    too_long = "x" * (MAX_TEXT + 1)
    response = client.post(
        _apply_url(gated_release),
        _form_data(gated_release, research_purpose=too_long, intended_use=too_long, role="r" * (MAX_NAME + 1)),
    )
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert f"at most {MAX_TEXT} characters" in errors["research_purpose"][0]
    assert f"at most {MAX_TEXT} characters" in errors["intended_use"][0]
    assert f"at most {MAX_NAME} characters" in errors["role"][0]
    assert not Application.objects.exists()


def test_every_bad_publication_line_is_listed(client: Any, applicant: Any, gated_release: Any) -> None:
    from tests.access.test_apply import _apply_url, _form_data

    client.force_login(applicant)
    long_url = "https://example.org/" + "a" * MAX_PUBLICATION
    lines = ["not a link", "10.1234/fine", "also bad", long_url]
    response = client.post(_apply_url(gated_release), _form_data(gated_release, publications="\n".join(lines)))
    assert response.status_code == 400
    message = response.context["form"].errors["publications"][0]
    assert "'not a link' is neither a URL" in message and "'also bad' is neither a URL" in message
    assert f"longer than {MAX_PUBLICATION} characters" in message
    assert "10.1234/fine" not in message


def test_api_lists_every_bad_publication_too(applicant: Any, gated_release: Any) -> None:
    body = application_body(gated_release, publications=["not a link", "also bad"])
    response = bearer(applicant).post(url("applications"), body, format="json")
    assert response.status_code == 400
    message = response.json()["errors"]["publications"][0]
    assert "'not a link'" in message and "'also bad'" in message


@pytest.mark.parametrize(
    ("route", "field"),
    [("review-note", "body"), ("review-request-info", "message"), ("review-reject", "reason")],
)
def test_review_forms_text_has_the_api_limits(
    client: Any, reviewer: Any, application: Any, route: str, field: str
) -> None:
    client.force_login(reviewer)
    data = {field: "x" * (MAX_TEXT + 1), "expected_version": application.version}
    response = client.post(reverse(route, args=[application.pk]), data)
    assert response.status_code == 400
    assert f"at most {MAX_TEXT} characters" in response.content.decode()
    application.refresh_from_db()
    assert application.status == ApplicationStatus.SUBMITTED and not application.notes.exists()


def test_answer_form_has_the_api_limit(client: Any, applicant: Any, reviewer: Any, application: Any) -> None:
    from access.services.audit import RequestMeta
    from access.services.reviews import application_request_info

    application_request_info(application=application, reviewer=reviewer, message="Which data?", meta=RequestMeta())
    client.force_login(applicant)
    response = client.post(reverse("application-answer", args=[application.pk]), {"message": "x" * (MAX_TEXT + 1)})
    assert response.status_code == 400
    application.refresh_from_db()
    assert application.status == ApplicationStatus.NEEDS_INFO


def test_profile_form_has_the_api_limit(client: Any, applicant: Any) -> None:
    client.force_login(applicant)
    response = client.post(reverse("profile"), {"full_name": "x" * (MAX_NAME + 1), "affiliation": "Heidelberg"})
    assert response.status_code == 400

"""What the applicant sees: my access, one application's status and thread, answers, withdrawals,
renewals and notifications."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from access.models import Application, ApplicationStatus, Grant, Notification
from access.services.audit import RequestMeta
from access.services.licenses import license_version_publish
from access.services.reviews import (
    application_add_note,
    application_approve,
    application_reject,
    application_request_info,
    application_start_review,
)
from tests import factories
from tests.conftest import login

pytestmark = pytest.mark.django_db
META = RequestMeta(ip="10.0.0.1", user_agent="pytest")
SECRET_NOTE = "Internal: affiliation looks doubtful, check with legal."


def _detail(application: Any) -> str:
    return reverse("application-detail", args=[application.pk])


def _near_expiry(grant: Grant, days: int = 10) -> Grant:
    Grant.objects.filter(pk=grant.pk).update(expires_at=timezone.now() + timedelta(days=days))
    grant.refresh_from_db()
    return grant


# --- Guards -----------------------------------------------------------------------------------


def test_pages_need_sign_in(client: Any, application: Any) -> None:
    for url in [reverse("my-applications"), _detail(application), reverse("notifications")]:
        response = client.get(url)
        assert response.status_code == 302 and response.url.startswith(reverse("login")), url
    for url in [
        reverse("application-answer", args=[application.pk]),
        reverse("application-withdraw", args=[application.pk]),
    ]:
        assert client.post(url, {"message": "x", "confirm": "on"}).status_code == 302
    application.refresh_from_db()
    assert application.status == ApplicationStatus.SUBMITTED


def test_other_applicant_gets_404_everywhere(client: Any, application: Any, other_applicant: Any) -> None:
    login(client, other_applicant)
    assert client.get(_detail(application)).status_code == 404
    assert client.post(reverse("application-withdraw", args=[application.pk]), {"confirm": "on"}).status_code == 404
    assert client.post(reverse("application-answer", args=[application.pk]), {"message": "hi"}).status_code == 404
    assert client.get(reverse("application-detail", args=[999999])).status_code == 404
    application.refresh_from_db()
    assert application.status == ApplicationStatus.SUBMITTED


def test_reviewer_may_read_but_not_act_as_applicant(client: Any, application: Any, reviewer: Any) -> None:
    login(client, reviewer)
    page = client.get(_detail(application))
    assert page.status_code == 200
    assert reverse("review-detail", args=[application.pk]).encode() in page.content
    assert b"Withdraw application" not in page.content
    assert client.post(reverse("application-withdraw", args=[application.pk]), {"confirm": "on"}).status_code == 404


# --- My access --------------------------------------------------------------------------------


def test_my_applications_lists_applications_and_grants(
    client: Any, applicant: Any, reviewer: Any, gated_release: Any, open_release: Any
) -> None:
    first = factories.make_application(applicant, gated_release)
    application_reject(application=first, reviewer=reviewer, reason="No.", meta=META)
    second = factories.make_application(applicant, factories.make_release(slug="opt-66b", name="OPT-66B", gated=True))
    grant = application_approve(application=second, reviewer=reviewer, meta=META)
    login(client, applicant)
    text = client.get(reverse("my-applications")).content.decode()
    assert f"#{first.pk}" in text and 'class="status status-rejected">Rejected' in text
    assert f"#{second.pk}" in text and 'class="status status-approved">Approved' in text
    assert f"{grant.expires_at:%Y-%m-%d}" in text and 'class="status status-active">active' in text
    assert "Request renewal" not in text  # far from expiry


def test_renewal_button_and_flow(client: Any, applicant: Any, reviewer: Any, application: Any) -> None:
    grant = _near_expiry(application_approve(application=application, reviewer=reviewer, meta=META))
    new_version = license_version_publish(
        license_id=application.release.license_id, version="1.1", text="Version 1.1: cite the paper.", actor=None
    )
    login(client, applicant)
    listing = client.get(reverse("my-applications")).content.decode()
    renew_url = reverse("grant-renew", args=[grant.pk])
    assert "Request renewal" in listing and renew_url in listing

    page = client.get(renew_url)
    assert page.status_code == 200
    assert b"Version 1.1: cite the paper." in page.content
    assert f'name="license_version_id" value="{new_version.pk}"'.encode() in page.content

    missing_box = client.post(renew_url, {"license_version_id": new_version.pk})
    assert missing_box.status_code == 400 and "Tick the box" in missing_box.context["form"].errors["accept"][0]

    response = client.post(renew_url, {"license_version_id": new_version.pk, "accept": "on"})
    renewal = Application.objects.get(renewal_of=grant)
    assert response.status_code == 302 and response.url == _detail(renewal)
    assert renewal.status == ApplicationStatus.SUBMITTED
    assert renewal.license_acceptance.license_version == new_version
    assert renewal.research_purpose == application.research_purpose
    # The button is gone while the renewal is pending, and a second request is refused.
    assert "Request renewal" not in client.get(reverse("my-applications")).content.decode()
    again = client.get(renew_url)
    assert b'data-testid="renew-blocked"' in again.content and f"#{renewal.pk}".encode() in again.content
    assert client.post(renew_url, {"license_version_id": new_version.pk, "accept": "on"}).status_code == 409
    assert Application.objects.filter(renewal_of=grant).count() == 1


def test_renewal_too_early_names_the_opening_date(client: Any, applicant: Any, reviewer: Any, application: Any) -> None:
    grant = application_approve(application=application, reviewer=reviewer, meta=META)
    login(client, applicant)
    url = reverse("grant-renew", args=[grant.pk])
    assert b"Renewal opens 30 days before expiry" in client.get(url).content
    response = client.post(url, {"license_version_id": application.release.license.current_version.pk, "accept": "on"})
    assert response.status_code == 403 and b"Renewal opens" in response.content
    assert not Application.objects.filter(renewal_of=grant).exists()


def test_renewal_of_someone_elses_grant_is_404(
    client: Any, other_applicant: Any, reviewer: Any, application: Any
) -> None:
    grant = _near_expiry(application_approve(application=application, reviewer=reviewer, meta=META))
    login(client, other_applicant)
    url = reverse("grant-renew", args=[grant.pk])
    assert client.get(url).status_code == 404
    assert client.post(url, {"license_version_id": 1, "accept": "on"}).status_code == 404
    assert not Application.objects.filter(renewal_of=grant).exists()


# --- Application detail -----------------------------------------------------------------------


def test_detail_shows_fields_and_status_explanation(client: Any, applicant: Any, application: Any) -> None:
    login(client, applicant)
    text = client.get(_detail(application)).content.decode()
    assert 'class="status status-submitted">Submitted' in text and "in the queue" in text
    assert "PhD student" in text and "Evaluation only; no fine-tuning" in text
    assert 'href="https://doi.org/10.1234/calibration.2024"' in text
    assert "opt-175b-license license v1.0" in text
    assert "Withdraw application" in text


def test_approved_detail_names_grant_expiry(client: Any, applicant: Any, reviewer: Any, application: Any) -> None:
    grant = application_approve(application=application, reviewer=reviewer, meta=META)
    login(client, applicant)
    text = client.get(_detail(application)).content.decode()
    assert "is approved" in text and f"until <strong>{grant.expires_at:%Y-%m-%d}</strong>" in text
    assert "Withdraw application" not in text


def test_rejected_detail_gives_reason_and_reapply_date(
    client: Any, applicant: Any, reviewer: Any, application: Any
) -> None:
    application_reject(
        application=application, reviewer=reviewer, reason="Purpose unclear; say which benchmarks.", meta=META
    )
    application.refresh_from_db()
    login(client, applicant)
    text = client.get(_detail(application)).content.decode()
    assert "Purpose unclear; say which benchmarks." in text
    assert f"You can apply again from <strong>{application.decided_at + timedelta(days=30):%Y-%m-%d}</strong>" in text


def test_answer_flow_moves_needs_info_to_in_review_and_hides_reviewer_notes(
    client: Any, applicant: Any, reviewer: Any, application: Any
) -> None:
    application_start_review(application=application, reviewer=reviewer, meta=META)
    application_add_note(application=application, reviewer=reviewer, body=SECRET_NOTE, meta=META)
    application_request_info(application=application, reviewer=reviewer, message="Which benchmarks exactly?", meta=META)
    login(client, applicant)
    page = client.get(_detail(application)).content.decode()
    assert "Needs information" in page and "Which benchmarks exactly?" in page
    assert "Answer the question" in page
    assert SECRET_NOTE not in page

    empty = client.post(reverse("application-answer", args=[application.pk]), {"message": "   "})
    assert empty.status_code == 400 and "Write your answer" in empty.content.decode()

    response = client.post(
        reverse("application-answer", args=[application.pk]), {"message": "MMLU and TriviaQA."}, follow=True
    )
    assert response.status_code == 200
    application.refresh_from_db()
    assert application.status == ApplicationStatus.IN_REVIEW
    text = response.content.decode()
    assert "MMLU and TriviaQA." in text and "Which benchmarks exactly?" in text
    assert "Answer the question" not in text
    assert SECRET_NOTE not in text
    # Nor anywhere else the applicant looks.
    assert SECRET_NOTE not in client.get(reverse("my-applications")).content.decode()
    assert SECRET_NOTE not in client.get(reverse("notifications")).content.decode()


def test_answer_when_not_asked_is_a_conflict(client: Any, applicant: Any, application: Any) -> None:
    login(client, applicant)
    response = client.post(reverse("application-answer", args=[application.pk]), {"message": "Unprompted."})
    assert response.status_code == 409
    assert b"cannot be" in response.content
    assert b"Unprompted." in response.content  # the typed answer is kept
    application.refresh_from_db()
    assert application.status == ApplicationStatus.SUBMITTED and not application.messages.exists()


def test_withdraw_needs_confirmation_then_withdraws(client: Any, applicant: Any, application: Any) -> None:
    login(client, applicant)
    url = reverse("application-withdraw", args=[application.pk])
    assert client.get(url).status_code == 405
    unconfirmed = client.post(url, {})
    assert unconfirmed.status_code == 400 and b"Tick the box to confirm" in unconfirmed.content
    application.refresh_from_db()
    assert application.status == ApplicationStatus.SUBMITTED

    response = client.post(url, {"confirm": "on"}, follow=True)
    application.refresh_from_db()
    assert application.status == ApplicationStatus.WITHDRAWN
    assert b"is withdrawn" in response.content and b"You withdrew this application" in response.content
    # Twice is a conflict, shown as such.
    twice = client.post(url, {"confirm": "on"})
    assert twice.status_code == 409 and b"cannot be" in twice.content


# --- Notifications ----------------------------------------------------------------------------


def test_notifications_newest_first_and_marked_read(
    client: Any, applicant: Any, other_applicant: Any, application: Any
) -> None:
    Notification.objects.create(user=applicant, subject="Newest news", body="b")
    theirs = Notification.objects.create(user=other_applicant, subject="Not yours", body="b")
    login(client, applicant)
    assert applicant.notifications.filter(read_at__isnull=True).count() == 2
    response = client.get(reverse("notifications"))
    text = response.content.decode()
    assert text.index("Newest news") < text.index("We received your application")
    assert "Not yours" not in text
    assert [item["unread"] for item in response.context["items"]] == [True, True]
    assert not applicant.notifications.filter(read_at__isnull=True).exists()
    theirs.refresh_from_db()
    assert theirs.read_at is None
    # The header badge no longer counts them, and a second view shows them as read.
    again = client.get(reverse("notifications"))
    assert b'data-testid="unread-count"' not in again.content
    assert [item["unread"] for item in again.context["items"]] == [False, False]

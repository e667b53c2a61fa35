"""What a new user hit: the info-request email carries the question, a revoked grant explains itself,
the audit trail reads as changes, country names agree, the API key can be copied, and the
verification link returns to the application the user started."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import mail
from django.urls import reverse

from access.services.audit import RequestMeta
from access.services.reviews import application_request_info, application_start_review
from tests.conftest import login

pytestmark = pytest.mark.django_db
META = RequestMeta(ip="10.0.0.1", user_agent="pytest")


def test_info_request_email_includes_the_question(
    application: Any, reviewer: Any, applicant: Any, django_capture_on_commit_callbacks: Any
) -> None:
    question = "Which benchmark datasets will you evaluate on?"
    with django_capture_on_commit_callbacks(execute=True):
        application_request_info(application=application, reviewer=reviewer, message=question, meta=META)
    sent = [m for m in mail.outbox if m.to == [applicant.email]]
    assert sent and question in sent[-1].body


def test_audit_trail_shows_readable_changes(client: Any, application: Any, reviewer: Any) -> None:
    application_start_review(application=application, reviewer=reviewer, meta=META)
    login(client, reviewer)
    page = client.get(reverse("review-detail", args=[application.pk])).content.decode()
    trail = page[page.index('data-testid="audit"') :]
    assert "status: submitted → in review" in trail
    assert "{&#x27;status&#x27;" not in trail and "{'status'" not in trail


def test_country_names_agree_between_form_and_review_pages(
    client: Any, reviewer: Any, other_applicant: Any, gated_release: Any
) -> None:
    from access.forms import ApplicationForm
    from tests import factories

    korean = factories.make_application(other_applicant, gated_release, country="KR")
    assert ("KR", "South Korea") in ApplicationForm().fields["country"].choices
    login(client, reviewer)
    assert "South Korea" in client.get(reverse("review-detail", args=[korean.pk])).content.decode()
    queue = client.get(reverse("review-queue")).content.decode()
    assert '<option value="KR">South Korea</option>' in queue and "Korea, Republic of" not in queue
    login(client, other_applicant)
    assert "South Korea" in client.get(reverse("application-detail", args=[korean.pk])).content.decode()


def test_new_api_key_has_a_copy_button_without_inline_handlers(client: Any, applicant: Any) -> None:
    login(client, applicant)
    page = client.post(reverse("api-keys"), {"name": "laptop"}).content.decode()
    assert 'data-testid="copy-key"' in page and 'data-copy-target="raw-key"' in page
    assert "navigator.clipboard" in page
    assert "onfocus=" not in page and "onsubmit=" not in page


@pytest.fixture
def revoked(application: Any, reviewer: Any) -> Any:
    from access.services.grants import grant_revoke
    from access.services.reviews import application_approve

    grant = application_approve(application=application, reviewer=reviewer, meta=META)
    return grant_revoke(grant=grant, actor=reviewer, reason="Weights shared outside the lab.", meta=META)


def test_revoked_application_shows_grant_state_reason_and_next_step(
    client: Any, applicant: Any, application: Any, revoked: Any
) -> None:
    login(client, applicant)
    page = client.get(reverse("application-detail", args=[application.pk])).content.decode()
    status = page[page.index('data-testid="status"') : page.index("<h2>Messages")]
    assert "Access revoked" in status and ">Approved<" not in status
    assert "Weights shared outside the lab." in status
    assert reverse("release-apply", args=[application.release.slug]) in status
    mine = client.get(reverse("my-applications")).content.decode()
    table = mine[mine.index('data-testid="applications"') :]
    assert "Access revoked" in table and ">Approved<" not in table


def test_renew_page_of_a_revoked_grant_explains_and_offers_to_apply(
    client: Any, applicant: Any, application: Any, revoked: Any
) -> None:
    login(client, applicant)
    page = client.get(reverse("grant-renew", args=[revoked.pk])).content.decode()
    assert "Weights shared outside the lab." in page
    assert reverse("release-apply", args=[application.release.slug]) in page


def test_download_renew_link_of_a_revoked_user_explains_instead_of_a_bare_403(
    client: Any, applicant: Any, application: Any, revoked: Any
) -> None:
    from artifacts.models import Checkpoint, CheckpointState

    checkpoint = Checkpoint.objects.create(
        release=application.release, variant="tp1", format="hf", state=CheckpointState.READY, storage_prefix="x/"
    )
    login(client, applicant)
    response = client.get(reverse("downloads-renew", args=[checkpoint.pk]))
    assert response.status_code == 403
    page = response.content.decode()
    assert 'data-reason="grant_revoked"' in page and "Weights shared outside the lab." in page
    assert reverse("release-apply", args=[application.release.slug]) in page


def _signup_and_link(client: Any, next_path: str, capture: Any) -> str:
    import re

    with capture(execute=True):
        response = client.post(
            reverse("signup"),
            {
                "email": "nina@uni-bonn.de",
                "full_name": "Nina N",
                "affiliation": "University of Bonn",
                "password": "a long enough passphrase",
                "password_again": "a long enough passphrase",
                "next": next_path,
            },
        )
    assert response.status_code == 302
    body = [m for m in mail.outbox if m.to == ["nina@uni-bonn.de"]][-1].body
    match = re.search(r"https?://[^/\s]+(/\S+)", body)
    assert match, body
    return match.group(1)


def test_verification_link_returns_to_the_application_started(
    client: Any, gated_release: Any, django_capture_on_commit_callbacks: Any
) -> None:
    apply_path = reverse("release-apply", args=[gated_release.slug])
    link = _signup_and_link(client, apply_path, django_capture_on_commit_callbacks)
    # Signed in (same browser): straight back to the application form.
    response = client.get(link)
    assert response.status_code == 302 and response.url == apply_path
    # Signed out (another device): through sign-in, then to the application form.
    client.post(reverse("logout"))
    response = client.get(link)
    assert response.status_code == 302 and response.url == f"{reverse('login')}?next={apply_path.replace('/', '%2F')}"


def test_verification_link_never_carries_an_offsite_next(client: Any, django_capture_on_commit_callbacks: Any) -> None:
    link = _signup_and_link(client, "https://evil.example/phish", django_capture_on_commit_callbacks)
    assert "evil" not in link
    response = client.get(link.split("?")[0] + "?next=//evil.example/x")
    assert response.status_code == 302 and response.url == reverse("profile")

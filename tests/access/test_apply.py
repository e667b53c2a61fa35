"""The application form: field errors next to their fields with nothing lost, and the success path."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import mail
from django.urls import reverse

from access.models import Application, ApplicationStatus, LicenseAcceptance
from access.services.audit import RequestMeta
from access.services.licenses import license_version_publish
from access.services.reviews import application_reject
from tests import factories
from tests.conftest import login

pytestmark = pytest.mark.django_db
META = RequestMeta(ip="10.0.0.1", user_agent="pytest")


def _form_data(release: Any, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "full_name": "Alice Adams",
        "affiliation": "Heidelberg University",
        "organization_type": "academic",
        "role": "PhD student",
        "country": "DE",
        "research_purpose": factories.RESEARCH_PURPOSE,
        "intended_use": "Evaluation only; no fine-tuning, no deployment.",
        "publications": "10.1234/calibration.2024\r\n\r\nhttps://arxiv.org/abs/2205.01068\r\n",
        "license_version_id": release.license.current_version.pk,
        "accept_license": "on",
        "non_commercial_attested": "on",
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def _apply_url(release: Any) -> str:
    return reverse("release-apply", args=[release.slug])


def test_apply_needs_sign_in(client: Any, gated_release: Any) -> None:
    response = client.get(_apply_url(gated_release))
    assert response.status_code == 302
    assert response.url.startswith(reverse("login")) and "next=" in response.url
    response = client.post(_apply_url(gated_release), _form_data(gated_release))
    assert response.status_code == 302 and not Application.objects.exists()


def test_form_prefills_profile_shows_email_license_and_countries(
    client: Any, applicant: Any, gated_release: Any
) -> None:
    login(client, applicant)
    response = client.get(_apply_url(gated_release))
    assert response.status_code == 200
    text = response.content.decode()
    assert 'value="Alice Adams"' in text and 'value="Heidelberg University"' in text
    assert f'value="{applicant.email}" readonly' in text
    assert "Non-commercial research license, version 1.0." in text
    assert "I accept opt-175b-license license version 1.0" in text
    assert f'name="license_version_id" value="{gated_release.license.current_version.pk}"' in text
    assert '<option value="DE">Germany</option>' in text
    countries = [label for value, label in response.context["form"].fields["country"].choices if value]
    assert countries == sorted(countries) and len(countries) > 200


def test_success_creates_application_with_accepted_license_version(
    client: Any, applicant: Any, gated_release: Any, django_capture_on_commit_callbacks: Any
) -> None:
    login(client, applicant)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            _apply_url(gated_release),
            _form_data(gated_release),
            REMOTE_ADDR="192.0.2.5",
            HTTP_USER_AGENT="TestBrowser/2",
        )
    application = Application.objects.get(applicant=applicant)
    assert response.status_code == 302
    assert response.url == reverse("application-detail", args=[application.pk])
    assert application.status == ApplicationStatus.SUBMITTED
    assert application.email == applicant.email and application.country == "DE"
    assert application.publications == ["doi:10.1234/calibration.2024", "https://arxiv.org/abs/2205.01068"]
    acceptance = application.license_acceptance
    assert acceptance.license_version == gated_release.license.current_version
    assert acceptance.ip_address == "192.0.2.5" and acceptance.user_agent == "TestBrowser/2"
    assert application.submitted_ip == "192.0.2.5"
    assert any(m.to == [applicant.email] for m in mail.outbox)
    page = client.get(response.url)
    assert f"Your application #{application.pk} for OPT-175B is submitted".encode() in page.content


def test_field_errors_shown_next_to_fields_and_typed_values_kept(
    client: Any, applicant: Any, gated_release: Any
) -> None:
    login(client, applicant)
    short_purpose = "I want to try the biggest model for my thesis <3"
    response = client.post(
        _apply_url(gated_release),
        _form_data(
            gated_release,
            research_purpose=short_purpose,
            role="",
            country="XX",
            organization_type="",
            publications="not a link\nhttps://arxiv.org/abs/1",
            accept_license=None,
            non_commercial_attested=None,
            intended_use="Benchmarking only",
        ),
    )
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert "at least 200 characters" in errors["research_purpose"][0]
    assert f"(you wrote {len(short_purpose)})" in errors["research_purpose"][0]
    assert errors["role"] == ["This field is required."]
    assert "Select a valid choice" in errors["country"][0]
    assert "Choose one of" in errors["organization_type"][0]
    assert "neither a URL" in errors["publications"][0]
    assert errors["accept_license"] == ["You must accept the license to apply."]
    assert errors["non_commercial_attested"] == ["You must attest that your use is non-commercial."]
    text = response.content.decode()
    # Nothing typed is lost: the re-rendered page carries every value (escaped as HTML).
    assert "I want to try the biggest model for my thesis &lt;3" in text
    assert "Benchmarking only" in text and "not a link\nhttps://arxiv.org/abs/1" in text
    # Each error sits inside its field's block, after its input.
    purpose_block = text.split('id="id_research_purpose"', 1)[1].split('class="field', 1)[0]
    assert "at least 200 characters" in purpose_block
    assert not Application.objects.exists() and not LicenseAcceptance.objects.exists()


def test_too_many_publications_is_a_field_error(client: Any, applicant: Any, gated_release: Any) -> None:
    login(client, applicant)
    many = "\n".join(f"https://example.org/paper/{i}" for i in range(21))
    response = client.post(_apply_url(gated_release), _form_data(gated_release, publications=many))
    assert response.status_code == 400
    assert response.context["form"].errors["publications"] == ["List at most 20 publications."]


def test_unverified_user_is_told_and_cannot_submit(client: Any, gated_release: Any) -> None:
    user = factories.make_user("dora@uni.edu", full_name="Dora D", affiliation="Uni", verified=False)
    login(client, user)
    page = client.get(_apply_url(gated_release))
    assert b'data-testid="apply-unverified"' in page.content
    assert b"disabled" in page.content
    response = client.post(_apply_url(gated_release), _form_data(gated_release))
    assert response.status_code == 403
    assert b"Verify your email address first" in response.content
    assert factories.RESEARCH_PURPOSE.encode() in response.content
    assert not Application.objects.exists()


def test_open_release_apply_redirects_to_license(client: Any, applicant: Any, open_release: Any) -> None:
    login(client, applicant)
    response = client.get(_apply_url(open_release), follow=True)
    assert response.redirect_chain[-1][0] == reverse("release-license", args=[open_release.slug])
    assert b"is an open release" in response.content


def test_open_application_blocks_form_with_link(client: Any, applicant: Any, gated_release: Any) -> None:
    application = factories.make_application(applicant, gated_release)
    login(client, applicant)
    page = client.get(_apply_url(gated_release))
    assert b'data-testid="apply-blocked"' in page.content
    assert reverse("application-detail", args=[application.pk]).encode() in page.content
    # A submit anyway (an old tab) is a conflict with the same link, and keeps the answers.
    response = client.post(_apply_url(gated_release), _form_data(gated_release))
    assert response.status_code == 409
    assert b"already have an open application" in response.content
    assert reverse("application-detail", args=[application.pk]).encode() in response.content
    assert Application.objects.count() == 1


def test_cooling_off_after_rejection_names_the_date(
    client: Any, applicant: Any, reviewer: Any, gated_release: Any
) -> None:
    application = factories.make_application(applicant, gated_release)
    application_reject(application=application, reviewer=reviewer, reason="Too vague.", meta=META)
    login(client, applicant)
    assert b"you can apply again from" in client.get(_apply_url(gated_release)).content
    response = client.post(_apply_url(gated_release), _form_data(gated_release))
    assert response.status_code == 403
    assert b"you can apply again from" in response.content
    assert Application.objects.count() == 1


def test_license_changed_while_filling_in_keeps_answers_and_shows_new_version(
    client: Any, applicant: Any, gated_release: Any
) -> None:
    login(client, applicant)
    data = _form_data(gated_release)
    new = license_version_publish(
        license_id=gated_release.license_id, version="2.0", text="Version two: share nothing.", actor=None
    )
    response = client.post(_apply_url(gated_release), data)
    assert response.status_code == 409
    text = response.content.decode()
    assert "version 2.0 is now in force" in text and "Version two: share nothing." in text
    assert f'name="license_version_id" value="{new.pk}"' in text
    assert "I accept opt-175b-license license version 2.0" in text
    assert factories.RESEARCH_PURPOSE in text
    assert not response.context["form"]["accept_license"].value()
    assert not Application.objects.exists()
    # Ticking the box again for the new version goes through.
    response = client.post(_apply_url(gated_release), {**data, "license_version_id": new.pk})
    assert response.status_code == 302
    assert Application.objects.get().license_acceptance.license_version == new

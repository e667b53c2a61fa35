"""Catalog pages: index, release detail (architecture, model card, data card, access panel), license."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from access.models import AccessTier, Grant, LicenseAcceptance, Release
from access.services.audit import RequestMeta
from access.services.grants import grant_revoke
from access.services.licenses import license_accept, license_version_publish
from access.services.reviews import application_approve, application_reject
from tests import factories
from tests.conftest import login

pytestmark = pytest.mark.django_db
META = RequestMeta(ip="10.0.0.1", user_agent="pytest")


def _moe_release() -> Release:
    release = factories.make_release(slug="glam-64b", name="GLaM-64B", gated=True)
    Release.objects.filter(pk=release.pk).update(
        n_experts=64, experts_per_token=2, moe_every=2, training_tp=8, active_parameters=8_000_000_000
    )
    release.refresh_from_db()
    data_card = release.data_card
    data_card.datasets = [
        {"name": "The Pile", "share": 0.625, "description": "Curated English text"},
        {"name": "CC-Stories", "share": 0.375, "description": "Story-like Common Crawl"},
    ]
    data_card.motivation = "Pre-train a general English model."
    data_card.save()
    return release


def test_index_groups_by_family_with_tier_size_and_parameters(
    client: Any, gated_release: Any, open_release: Any
) -> None:
    response = client.get(reverse("catalog"))
    assert response.status_code == 200
    families = response.context["families"]
    assert [g["family"].slug for g in families] == ["opt"]
    assert {item["release"].slug for item in families[0]["releases"]} == {"opt-175b", "opt-125m"}
    text = response.content.decode()
    assert "Meta AI" in text and "OPT-175B" in text and "OPT-125M" in text
    assert 'class="tag gated"' in text and 'class="tag open"' in text
    assert "125,000,000" in text  # parameters
    assert "Your access" not in text  # anonymous: no per-user state


def test_index_hides_unlisted_releases(client: Any, gated_release: Any) -> None:
    Release.objects.filter(pk=gated_release.pk).update(is_listed=False)
    assert b"OPT-175B" not in client.get(reverse("catalog")).content
    assert client.get(reverse("release-detail", args=["opt-175b"])).status_code == 404


def test_index_shows_the_users_access_state(client: Any, applicant: Any, gated_release: Any, open_release: Any) -> None:
    factories.make_application(applicant, gated_release)
    license_accept(
        user=applicant, release=open_release, license_version_id=open_release.license.current_version.pk, meta=META
    )
    login(client, applicant)
    states = {
        item["release"].slug: item["state"]["label"]
        for item in client.get(reverse("catalog")).context["families"][0]["releases"]
    }
    assert states == {"opt-175b": "Application submitted", "opt-125m": "Access granted"}


def test_detail_renders_architecture_model_card_data_card_and_license(client: Any) -> None:
    release = _moe_release()
    response = client.get(reverse("release-detail", args=[release.slug]))
    assert response.status_code == 200
    text = response.content.decode()
    for label, value in [
        ("Layers", "12"),
        ("Attention heads", "12"),
        ("Key/value heads", "12"),
        ("Hidden size", "768"),
        ("FFN size", "3,072"),
        ("Vocabulary", "50,272"),
        ("Max positions", "2,048"),
        ("Experts", "64"),
        ("Experts per token (top-k)", "2"),
        ("Tensor parallelism at training", "8"),
    ]:
        assert f'<th scope="row">{label}</th><td>{value}</td>' in text, label
    assert "MoE layer every" in text
    # Model card.
    for snippet in ["2022-05-03", "decoder-only transformer", "Out-of-scope use", "production", "Training compute"]:
        assert snippet in text
    # Data card, shares as percentages, size in tokens.
    assert "Pre-train a general English model." in text
    assert "<td>The Pile</td><td>62.5%</td>" in text and "<td>CC-Stories</td><td>37.5%</td>" in text
    assert "180,000,000,000 tokens" in text
    # License with a link to its text.
    assert "glam-64b-license license, version 1.0" in text
    assert reverse("release-license", args=[release.slug]) in text


def test_dense_release_has_no_moe_rows(client: Any, open_release: Any) -> None:
    text = client.get(reverse("release-detail", args=[open_release.slug])).content.decode()
    assert "Experts per token" not in text and "MoE layer every" not in text


def _panel(client: Any, release: Any) -> tuple[str, str]:
    response = client.get(reverse("release-detail", args=[release.slug]))
    assert response.status_code == 200
    return response.context["state"]["decision"].reason, response.content.decode()


def test_access_panel_states_for_gated_release(client: Any, applicant: Any, reviewer: Any, gated_release: Any) -> None:
    reason, text = _panel(client, gated_release)
    assert reason == "anonymous" and "sign in to apply" in text

    login(client, applicant)
    reason, text = _panel(client, gated_release)
    assert reason == "no_grant" and reverse("release-apply", args=[gated_release.slug]) in text

    application = factories.make_application(applicant, gated_release)
    reason, text = _panel(client, gated_release)
    assert f"application #{application.pk}</a> is" in text and "submitted" in text

    grant = application_approve(application=application, reviewer=reviewer, meta=META)
    reason, text = _panel(client, gated_release)
    assert reason == "ok" and f"Access granted until {grant.expires_at:%Y-%m-%d}" in text

    license_version_publish(license_id=gated_release.license_id, version="2.0", text="Version two.", actor=None)
    reason, text = _panel(client, gated_release)
    assert reason == "license_changed" and "accept the new version" in text
    assert reverse("release-license", args=[gated_release.slug]) in text

    grant_revoke(grant=grant, actor=reviewer, reason="Shared the weights.", meta=META)
    reason, text = _panel(client, gated_release)
    assert reason == "grant_revoked" and "was revoked" in text and "Shared the weights." in text


def test_access_panel_expired_grant_offers_new_application(
    client: Any, applicant: Any, reviewer: Any, gated_release: Any
) -> None:
    application = factories.make_application(applicant, gated_release)
    grant = application_approve(application=application, reviewer=reviewer, meta=META)
    Grant.objects.filter(pk=grant.pk).update(
        starts_at=timezone.now() - timedelta(days=400), expires_at=timezone.now() - timedelta(days=1)
    )
    login(client, applicant)
    reason, text = _panel(client, gated_release)
    assert reason == "grant_expired" and "expired on" in text
    assert reverse("release-apply", args=[gated_release.slug]) in text


def test_access_panel_after_rejection_shows_reapply_date(
    client: Any, applicant: Any, reviewer: Any, gated_release: Any
) -> None:
    application = factories.make_application(applicant, gated_release)
    application_reject(application=application, reviewer=reviewer, reason="Too vague.", meta=META)
    login(client, applicant)
    _, text = _panel(client, gated_release)
    application.refresh_from_db()
    assert f"You can apply again from {application.decided_at + timedelta(days=30):%Y-%m-%d}" in text


def test_access_panel_for_open_release(client: Any, applicant: Any, open_release: Any) -> None:
    login(client, applicant)
    reason, text = _panel(client, open_release)
    assert reason == "license_not_accepted" and "Accept license" in text
    license_accept(
        user=applicant, release=open_release, license_version_id=open_release.license.current_version.pk, meta=META
    )
    reason, text = _panel(client, open_release)
    assert reason == "ok" and "You accepted the current license" in text


# --- License page -----------------------------------------------------------------------------


def test_license_text_readable_anonymously_but_accepting_needs_sign_in(client: Any, open_release: Any) -> None:
    url = reverse("release-license", args=[open_release.slug])
    page = client.get(url)
    assert page.status_code == 200
    assert b"Non-commercial research license, version 1.0." in page.content
    assert b"Sign in to accept" in page.content
    response = client.post(url, {"accept": "on", "license_version_id": open_release.license.current_version.pk})
    assert response.status_code == 302
    assert response.url.startswith(reverse("login")) and "next=" in response.url
    assert not LicenseAcceptance.objects.exists()


def test_accept_open_release_license_records_version_ip_and_user_agent(
    client: Any, applicant: Any, open_release: Any
) -> None:
    login(client, applicant)
    version = open_release.license.current_version
    url = reverse("release-license", args=[open_release.slug])
    page = client.get(url)
    assert f'value="{version.pk}"'.encode() in page.content
    response = client.post(
        url,
        {"accept": "on", "license_version_id": version.pk},
        REMOTE_ADDR="192.0.2.7",
        HTTP_USER_AGENT="TestBrowser/1.0",
    )
    assert response.status_code == 302 and response.url == reverse("release-detail", args=[open_release.slug])
    acceptance = LicenseAcceptance.objects.get(user=applicant, release=open_release)
    assert acceptance.license_version == version
    assert acceptance.ip_address == "192.0.2.7" and acceptance.user_agent == "TestBrowser/1.0"
    assert b"You accepted version 1.0" in client.get(url).content


def test_accept_without_ticking_the_box_is_a_field_error(client: Any, applicant: Any, open_release: Any) -> None:
    login(client, applicant)
    response = client.post(
        reverse("release-license", args=[open_release.slug]),
        {"license_version_id": open_release.license.current_version.pk},
    )
    assert response.status_code == 400
    assert "Tick the box" in response.context["form"].errors["accept"][0]
    assert not LicenseAcceptance.objects.exists()


def test_accept_stale_version_is_a_conflict_showing_the_new_text(
    client: Any, applicant: Any, open_release: Any
) -> None:
    login(client, applicant)
    old = open_release.license.current_version
    new = license_version_publish(
        license_id=open_release.license_id, version="2.0", text="Version two: attribution required.", actor=None
    )
    response = client.post(
        reverse("release-license", args=[open_release.slug]), {"accept": "on", "license_version_id": old.pk}
    )
    assert response.status_code == 409
    text = response.content.decode()
    assert "changed while you were reading it" in text and "version 2.0 is now in force" in text
    assert "Version two: attribution required." in text
    assert f'value="{new.pk}"' in text
    assert not LicenseAcceptance.objects.exists()


def test_gated_release_license_page_sends_non_holders_to_apply(client: Any, applicant: Any, gated_release: Any) -> None:
    login(client, applicant)
    url = reverse("release-license", args=[gated_release.slug])
    page = client.get(url)
    assert reverse("release-apply", args=[gated_release.slug]).encode() in page.content
    response = client.post(url, {"accept": "on", "license_version_id": gated_release.license.current_version.pk})
    assert response.status_code == 403
    assert not LicenseAcceptance.objects.exists()


def test_grant_holder_accepts_new_gated_license_version(
    client: Any, applicant: Any, reviewer: Any, gated_release: Any
) -> None:
    application = factories.make_application(applicant, gated_release)
    application_approve(application=application, reviewer=reviewer, meta=META)
    new = license_version_publish(license_id=gated_release.license_id, version="2.0", text="Two.", actor=None)
    login(client, applicant)
    response = client.post(
        reverse("release-license", args=[gated_release.slug]), {"accept": "on", "license_version_id": new.pk}
    )
    assert response.status_code == 302
    reason, _ = _panel(client, gated_release)
    assert reason == "ok"


def test_unknown_release_is_404(client: Any) -> None:
    assert client.get(reverse("release-detail", args=["nope"])).status_code == 404
    assert client.get(reverse("release-license", args=["nope"])).status_code == 404


def test_access_tier_enum_is_what_the_tag_shows(client: Any, gated_release: Any) -> None:
    assert gated_release.access_tier == AccessTier.GATED
    text = client.get(reverse("release-detail", args=[gated_release.slug])).content.decode()
    assert 'class="tag gated">gated</span>' in text

"""One rule for "may I apply again?" and "may I renew?": the selectors (`apply_blocker`,
`renewal_blocker`) answer, and the apply page, the API, the catalog's access panel, the application's
status page, the renewal page and "My access" all say the same thing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape
from rest_framework.test import APIClient

from access import selectors
from access.models import Application, ApplicationStatus, Grant
from access.services.api_keys import api_key_create
from access.services.audit import RequestMeta
from access.services.grants import grant_request_renewal, grant_revoke
from access.services.reviews import application_approve, application_reject
from tests import factories
from tests.conftest import login

pytestmark = pytest.mark.django_db
META = RequestMeta(ip="10.0.0.9", user_agent="pytest")
COOLDOWN_DAYS = 14


@pytest.fixture(autouse=True)
def _cooldown(settings: Any) -> None:
    settings.REAPPLY_COOLDOWN_DAYS = COOLDOWN_DAYS


def _bearer(user: Any) -> APIClient:
    _, raw = api_key_create(user=user, name="rules")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def _api_body(release: Any) -> dict[str, Any]:
    return {
        "release": release.slug,
        "full_name": "Alice Adams",
        "affiliation": "Heidelberg University",
        "organization_type": "academic",
        "role": "PhD student",
        "country": "DE",
        "research_purpose": factories.RESEARCH_PURPOSE,
        "intended_use": "Evaluation only.",
        "publications": [],
        "license_version_id": release.license.current_version.pk,
        "accept_license": True,
        "non_commercial_attested": True,
    }


def _form_body(release: Any) -> dict[str, Any]:
    return {
        **_api_body(release),
        "publications": "",
        "accept_license": "on",
        "non_commercial_attested": "on",
    }


def _decided_days_ago(application: Any, days: int) -> None:
    past = timezone.now() - timedelta(days=days)
    Application.objects.filter(pk=application.pk).update(submitted_at=past - timedelta(days=1), decided_at=past)
    application.refresh_from_db()


def _reject(application: Any, reviewer: Any) -> None:
    application_reject(application=application, reviewer=reviewer, reason="Say which benchmarks.", meta=META)
    application.refresh_from_db()


def _every_door_refuses(client: Any, user: Any, release: Any, blocker: Any, *, api_status: int) -> None:
    """The apply page (before and after typing) and the API refuse with the selector's message."""
    before = Application.objects.filter(applicant=user).count()
    page = client.get(reverse("release-apply", args=[release.slug]))
    assert b'data-testid="apply-blocked"' in page.content
    assert escape(blocker.message) in page.content.decode()
    posted = client.post(reverse("release-apply", args=[release.slug]), _form_body(release))
    assert posted.status_code == api_status
    assert escape(blocker.message) in posted.content.decode()
    api = _bearer(user).post(reverse("api:applications"), _api_body(release), format="json")
    assert api.status_code == api_status
    assert api.json()["detail"] == blocker.message
    assert Application.objects.filter(applicant=user).count() == before


def _every_door_accepts(client: Any, user: Any, release: Any) -> Any:
    page = client.get(reverse("release-apply", args=[release.slug]))
    assert page.status_code == 200 and b'data-testid="apply-blocked"' not in page.content
    api = _bearer(user).post(reverse("api:applications"), _api_body(release), format="json")
    assert api.status_code == 201, api.json()
    return Application.objects.get(pk=api.json()["id"])


# --- Applying again ---------------------------------------------------------------------------


def test_cooldown_after_a_refusal_is_the_same_everywhere(
    client: Any, applicant: Any, reviewer: Any, application: Any, gated_release: Any
) -> None:
    _reject(application, reviewer)
    blocker = selectors.apply_blocker(user=applicant, release=gated_release)
    opens = selectors.reapply_from(application)
    assert blocker is not None and blocker.code == "cooldown" and blocker.application == application
    assert opens == application.decided_at + timedelta(days=COOLDOWN_DAYS)
    assert f"{opens:%Y-%m-%d}" in blocker.message
    login(client, applicant)
    _every_door_refuses(client, applicant, gated_release, blocker, api_status=403)
    panel = client.get(reverse("release-detail", args=[gated_release.slug])).content.decode()
    assert f"You can apply again from {opens:%Y-%m-%d}" in panel
    status_page = client.get(reverse("application-detail", args=[application.pk])).content.decode()
    assert f"You can apply again from <strong>{opens:%Y-%m-%d}</strong>" in status_page

    # The day the cooldown ends, every door opens.
    _decided_days_ago(application, COOLDOWN_DAYS + 1)
    assert selectors.apply_blocker(user=applicant, release=gated_release) is None
    status_page = client.get(reverse("application-detail", args=[application.pk])).content.decode()
    assert "You can apply again now" in status_page
    panel = client.get(reverse("release-detail", args=[gated_release.slug])).content.decode()
    assert reverse("release-apply", args=[gated_release.slug]) in panel and "You can apply again from" not in panel
    assert _every_door_accepts(client, applicant, gated_release).status == ApplicationStatus.SUBMITTED


def test_the_latest_refusal_sets_the_cooldown_even_on_an_older_applications_page(
    client: Any, applicant: Any, reviewer: Any, application: Any, gated_release: Any
) -> None:
    _reject(application, reviewer)
    _decided_days_ago(application, 40)  # long past its own cooldown
    later = factories.make_application(applicant, gated_release)
    _reject(later, reviewer)
    blocker = selectors.apply_blocker(user=applicant, release=gated_release)
    assert blocker is not None and blocker.code == "cooldown" and blocker.application == later
    opens = selectors.reapply_from(later)
    login(client, applicant)
    _every_door_refuses(client, applicant, gated_release, blocker, api_status=403)
    # The older application's page must not invite a new application the apply page then refuses.
    old_page = client.get(reverse("application-detail", args=[application.pk])).content.decode()
    assert "You can apply again now" not in old_page
    assert f"You can apply again from <strong>{opens:%Y-%m-%d}</strong>" in old_page


def test_an_open_application_blocks_everywhere_and_the_refused_ones_page_says_so(
    client: Any, applicant: Any, reviewer: Any, application: Any, gated_release: Any
) -> None:
    _reject(application, reviewer)
    _decided_days_ago(application, COOLDOWN_DAYS + 1)
    pending = factories.make_application(applicant, gated_release)
    blocker = selectors.apply_blocker(user=applicant, release=gated_release)
    assert blocker is not None and blocker.code == "open_application" and blocker.application == pending
    login(client, applicant)
    _every_door_refuses(client, applicant, gated_release, blocker, api_status=409)
    old_page = client.get(reverse("application-detail", args=[application.pk])).content.decode()
    assert "You can apply again" not in old_page
    assert escape(blocker.message) in old_page and reverse("application-detail", args=[pending.pk]) in old_page


def test_a_running_grant_blocks_a_new_application_everywhere(
    client: Any, applicant: Any, reviewer: Any, application: Any, gated_release: Any
) -> None:
    application_approve(application=application, reviewer=reviewer, meta=META)
    blocker = selectors.apply_blocker(user=applicant, release=gated_release)
    assert blocker is not None and blocker.code == "has_access"
    login(client, applicant)
    _every_door_refuses(client, applicant, gated_release, blocker, api_status=409)


@pytest.mark.parametrize("ended", ["expired", "revoked"])
def test_an_ended_grant_lets_everyone_apply_again(
    client: Any, ended: str, applicant: Any, reviewer: Any, application: Any, gated_release: Any
) -> None:
    grant = application_approve(application=application, reviewer=reviewer, meta=META)
    if ended == "expired":
        now = timezone.now()
        Grant.objects.filter(pk=grant.pk).update(starts_at=now - timedelta(days=90), expires_at=now - timedelta(days=1))
    else:
        grant_revoke(grant=grant, actor=reviewer, reason="Shared the weights.", meta=META)
    assert selectors.apply_blocker(user=applicant, release=gated_release) is None
    login(client, applicant)
    assert _every_door_accepts(client, applicant, gated_release).status == ApplicationStatus.SUBMITTED


# --- Renewing ---------------------------------------------------------------------------------


def _renewal_doors(client: Any, grant: Any) -> tuple[Any, bool, int]:
    """(the renewal page's blocker, whether "My access" offers renewal, what posting a renewal answers)."""
    page = client.get(reverse("grant-renew", args=[grant.pk]))
    assert page.status_code == 200
    listing = client.get(reverse("my-applications")).content.decode()
    offered = reverse("grant-renew", args=[grant.pk]) in listing
    posted = client.post(
        reverse("grant-renew", args=[grant.pk]),
        {"license_version_id": grant.release.license.current_version.pk, "accept": "on"},
    )
    return page.context["blocker"], offered, posted.status_code


def _shift_expiry(grant: Any, days: float) -> None:
    now = timezone.now()
    Grant.objects.filter(pk=grant.pk).update(starts_at=now - timedelta(days=400), expires_at=now + timedelta(days=days))
    grant.refresh_from_db()


@pytest.mark.parametrize(
    ("state", "code", "status"),
    [
        ("far_from_expiry", "too_early", 403),
        ("in_window", None, 302),
        ("expired", "grant_ended", 403),
        ("revoked", "grant_ended", 403),
        ("operator_grant", "operator_grant", 403),
    ],
)
def test_renewal_eligibility_is_the_same_on_every_page(
    client: Any,
    state: str,
    code: str | None,
    status: int,
    applicant: Any,
    reviewer: Any,
    application: Any,
    gated_release: Any,
    settings: Any,
) -> None:
    grant = application_approve(application=application, reviewer=reviewer, meta=META)
    window = settings.GRANT_RENEWAL_WINDOW_DAYS
    if state == "far_from_expiry":
        _shift_expiry(grant, window + 10)
    elif state == "in_window":
        _shift_expiry(grant, window - 10)
    elif state == "expired":
        _shift_expiry(grant, -1)
    elif state == "revoked":
        _shift_expiry(grant, window - 10)
        grant_revoke(grant=grant, actor=reviewer, reason="Shared the weights.", meta=META)
    else:
        _shift_expiry(grant, window - 10)
        Grant.objects.filter(pk=grant.pk).update(application=None)
    grant.refresh_from_db()
    blocker = selectors.renewal_blocker(grant)
    assert (blocker.code if blocker else None) == code
    assert selectors.grant_renewable(grant) is (blocker is None)
    login(client, applicant)
    shown, offered, posted = _renewal_doors(client, grant)
    assert (shown.code if shown else None) == code
    assert offered is (blocker is None)
    assert posted == status
    assert Application.objects.filter(renewal_of=grant).count() == (1 if blocker is None else 0)


def test_a_pending_renewal_blocks_a_second_one_everywhere(
    client: Any, applicant: Any, reviewer: Any, application: Any, gated_release: Any, settings: Any
) -> None:
    grant = application_approve(application=application, reviewer=reviewer, meta=META)
    _shift_expiry(grant, settings.GRANT_RENEWAL_WINDOW_DAYS - 10)
    renewal = grant_request_renewal(
        grant=grant, user=applicant, meta=META, license_version_id=gated_release.license.current_version.pk
    )
    blocker = selectors.renewal_blocker(grant)
    assert blocker is not None and blocker.code == "renewal_pending" and blocker.application == renewal
    # Also for a fresh application: the open renewal is the open application.
    apply_blocker = selectors.apply_blocker(user=applicant, release=gated_release)
    assert apply_blocker is not None and apply_blocker.code == "renewal_pending"
    login(client, applicant)
    shown, offered, posted = _renewal_doors(client, grant)
    assert shown.code == "renewal_pending" and not offered and posted == 409
    _every_door_refuses(client, applicant, gated_release, apply_blocker, api_status=409)
    assert Application.objects.filter(renewal_of=grant).count() == 1

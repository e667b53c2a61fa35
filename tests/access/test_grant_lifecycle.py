"""What an approval does to the applicant's grants: a new grant after one ran out or was revoked (the old
one kept as history, marked superseded), an extension while one is still running, never two current
grants. Through the service, the reviewer pages and the API."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from access import selectors
from access.models import ApplicationStatus, AuditEvent, Grant, GrantStatus
from access.services.audit import RequestMeta
from access.services.grants import grant_request_renewal, grant_revoke
from access.services.reviews import application_approve
from tests import factories
from tests.access.test_api import bearer
from tests.conftest import login

pytestmark = pytest.mark.django_db
META = RequestMeta(ip="10.0.0.9", user_agent="pytest")


def _run_out(grant: Any) -> None:
    """The grant ended yesterday (expiry is derived from `expires_at`; nothing else changes)."""
    now = timezone.now()
    Grant.objects.filter(pk=grant.pk).update(starts_at=now - timedelta(days=400), expires_at=now - timedelta(days=1))


def _revoke(grant: Any, reviewer: Any) -> None:
    grant_revoke(grant=grant, actor=reviewer, reason="Shared the weights with a third party.", meta=META)


def _grants(user: Any, release: Any) -> list[Any]:
    return list(Grant.objects.filter(user=user, release=release).order_by("pk"))


def _current(user: Any, release: Any) -> list[Any]:
    """Grants that count as current for the uniqueness constraint."""
    return list(Grant.objects.filter(user=user, release=release, status=GrantStatus.ACTIVE, superseded_at=None))


def _assert_new_grant_replaced(old: Any, new: Any, *, applicant: Any, release: Any, application: Any) -> None:
    old.refresh_from_db()
    new.refresh_from_db()
    assert new.pk != old.pk and new.application == application
    assert new.superseded_at is None and new.is_current()
    assert old.superseded_at is not None  # kept as history, no longer the latest
    assert _grants(applicant, release) == [old, new]
    assert _current(applicant, release) == [new]
    decision = selectors.release_access_check(user=applicant, release=release)
    assert decision.allowed and decision.grant == new
    created = AuditEvent.objects.get(action="grant.create", target_id=str(new.pk))
    assert created.after["supersedes"] == [old.pk]


# --- Through the service ----------------------------------------------------------------------


def test_reapplying_after_an_expired_grant_gives_a_new_grant(
    applicant: Any, reviewer: Any, application: Any, gated_release: Any
) -> None:
    first = application_approve(application=application, reviewer=reviewer, meta=META)
    _run_out(first)
    assert selectors.apply_blocker(user=applicant, release=gated_release) is None
    again = factories.make_application(applicant, gated_release)
    second = application_approve(application=again, reviewer=reviewer, meta=META)
    _assert_new_grant_replaced(first, second, applicant=applicant, release=gated_release, application=again)
    first.refresh_from_db()
    assert first.status == GrantStatus.ACTIVE and first.display_status == "expired"  # history is not rewritten


def test_reapplying_after_a_revoked_grant_gives_a_new_grant(
    applicant: Any, reviewer: Any, application: Any, gated_release: Any
) -> None:
    first = application_approve(application=application, reviewer=reviewer, meta=META)
    _revoke(first, reviewer)
    assert selectors.apply_blocker(user=applicant, release=gated_release) is None
    again = factories.make_application(applicant, gated_release)
    second = application_approve(application=again, reviewer=reviewer, meta=META)
    _assert_new_grant_replaced(first, second, applicant=applicant, release=gated_release, application=again)
    first.refresh_from_db()
    assert first.status == GrantStatus.REVOKED and first.revoke_reason.startswith("Shared the weights")


def test_a_long_history_keeps_every_grant_and_one_current(
    applicant: Any, reviewer: Any, application: Any, gated_release: Any
) -> None:
    grants = [application_approve(application=application, reviewer=reviewer, meta=META)]
    _revoke(grants[-1], reviewer)
    grants.append(
        application_approve(
            application=factories.make_application(applicant, gated_release), reviewer=reviewer, meta=META
        )
    )
    _run_out(grants[-1])
    grants.append(
        application_approve(
            application=factories.make_application(applicant, gated_release), reviewer=reviewer, meta=META
        )
    )
    assert len({grant.pk for grant in grants}) == 3
    assert _grants(applicant, gated_release) == grants
    assert [g.superseded_at is None for g in _grants(applicant, gated_release)] == [False, False, True]
    assert _current(applicant, gated_release) == [grants[-1]]


def test_approving_while_a_grant_runs_extends_it(
    applicant: Any, reviewer: Any, application: Any, gated_release: Any
) -> None:
    # A grant an operator made while the application waited (no application of its own).
    now = timezone.now()
    running = Grant.objects.create(
        user=applicant, release=gated_release, starts_at=now - timedelta(days=1), expires_at=now + timedelta(days=10)
    )
    grant = application_approve(
        application=application, reviewer=reviewer, meta=META, expires_at=now + timedelta(days=200)
    )
    assert grant.pk == running.pk
    assert _grants(applicant, gated_release) == [running]
    running.refresh_from_db()
    assert running.superseded_at is None and running.expires_at > now + timedelta(days=199)
    assert AuditEvent.objects.filter(action="grant.renew", target_id=str(running.pk)).exists()
    assert not AuditEvent.objects.filter(action="grant.create").exists()


def test_an_extension_never_shortens_a_running_grant(
    applicant: Any, reviewer: Any, application: Any, gated_release: Any
) -> None:
    now = timezone.now()
    running = Grant.objects.create(
        user=applicant, release=gated_release, starts_at=now - timedelta(days=1), expires_at=now + timedelta(days=300)
    )
    grant = application_approve(
        application=application, reviewer=reviewer, meta=META, expires_at=now + timedelta(days=5)
    )
    assert grant.pk == running.pk and grant.expires_at == running.expires_at


def test_a_renewal_decided_after_its_grant_ran_out_gives_a_new_grant(
    applicant: Any, reviewer: Any, application: Any, gated_release: Any
) -> None:
    first = application_approve(
        application=application, reviewer=reviewer, meta=META, expires_at=timezone.now() + timedelta(days=5)
    )
    renewal = grant_request_renewal(
        grant=first, user=applicant, meta=META, license_version_id=gated_release.license.current_version.pk
    )
    _run_out(first)  # the reviewer took too long
    second = application_approve(application=renewal, reviewer=reviewer, meta=META)
    _assert_new_grant_replaced(first, second, applicant=applicant, release=gated_release, application=renewal)
    assert selectors.application_grant(renewal) == second


# --- Through the reviewer page and the API ----------------------------------------------------


def test_the_review_page_approves_a_reapplication_after_expiry(
    client: Any, applicant: Any, reviewer: Any, application: Any, gated_release: Any
) -> None:
    first = application_approve(application=application, reviewer=reviewer, meta=META)
    _run_out(first)
    again = factories.make_application(applicant, gated_release)
    login(client, reviewer)
    expires_on = timezone.localdate() + timedelta(days=60)
    response = client.post(
        reverse("review-approve", args=[again.pk]),
        {"expected_version": again.version, "expires_on": expires_on.isoformat()},
    )
    assert response.status_code == 302 and response.url == reverse("review-detail", args=[again.pk])
    again.refresh_from_db()
    assert again.status == ApplicationStatus.APPROVED
    second = Grant.objects.get(application=again)
    assert timezone.localtime(second.expires_at).date() == expires_on
    _assert_new_grant_replaced(first, second, applicant=applicant, release=gated_release, application=again)


def test_the_review_page_approves_a_reapplication_after_revocation(
    client: Any, applicant: Any, reviewer: Any, application: Any, gated_release: Any
) -> None:
    first = application_approve(application=application, reviewer=reviewer, meta=META)
    _revoke(first, reviewer)
    again = factories.make_application(applicant, gated_release)
    login(client, reviewer)
    response = client.post(
        reverse("review-approve", args=[again.pk]),
        {
            "expected_version": again.version,
            "expires_on": (timezone.localdate() + timedelta(days=60)).isoformat(),
        },
    )
    assert response.status_code == 302
    _assert_new_grant_replaced(
        first, Grant.objects.get(application=again), applicant=applicant, release=gated_release, application=again
    )


@pytest.mark.parametrize("ended", ["expired", "revoked"])
def test_the_api_approves_a_reapplication_after_the_grant_ended(
    ended: str, applicant: Any, reviewer: Any, application: Any, gated_release: Any
) -> None:
    first = application_approve(application=application, reviewer=reviewer, meta=META)
    _run_out(first) if ended == "expired" else _revoke(first, reviewer)
    again = factories.make_application(applicant, gated_release)
    response = bearer(reviewer).post(
        reverse("api:review-approve", args=[again.pk]), {"expected_version": again.version}, format="json"
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["application"]["status"] == "approved" and body["grant"]["active"] is True
    second = Grant.objects.get(pk=body["grant"]["id"])
    _assert_new_grant_replaced(first, second, applicant=applicant, release=gated_release, application=again)
    # The holder's own list shows the whole history, the new grant first.
    rows = bearer(applicant).get(reverse("api:grants")).json()["results"]
    assert [row["id"] for row in rows] == [second.pk, first.pk]
    assert [row["state"] for row in rows] == ["active", ended]


def test_the_api_approving_a_renewal_extends_the_running_grant(
    applicant: Any, reviewer: Any, application: Any, gated_release: Any
) -> None:
    first = application_approve(
        application=application, reviewer=reviewer, meta=META, expires_at=timezone.now() + timedelta(days=5)
    )
    renewal = grant_request_renewal(
        grant=first, user=applicant, meta=META, license_version_id=gated_release.license.current_version.pk
    )
    expires = timezone.now() + timedelta(days=365)
    response = bearer(reviewer).post(
        reverse("api:review-approve", args=[renewal.pk]), {"expires_at": expires.isoformat()}, format="json"
    )
    assert response.status_code == 200, response.json()
    assert response.json()["grant"]["id"] == first.pk
    assert _grants(applicant, gated_release) == [first]
    first.refresh_from_db()
    assert abs((first.expires_at - expires).total_seconds()) < 1 and first.superseded_at is None

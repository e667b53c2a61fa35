"""The operators' admin: every model is there for a superuser, evidence is read-only, and the state changes
it offers go through the services."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import admin
from django.urls import reverse

from access.models import (
    ApiKey,
    AuditEvent,
    Grant,
    GrantStatus,
    License,
    LicenseVersion,
    Notification,
    RejectionTemplate,
    User,
)
from access.selectors import release_access_check
from access.services.api_keys import api_key_create
from access.services.audit import RequestMeta
from access.services.reviews import application_approve
from tests import factories
from tests.conftest import login

pytestmark = pytest.mark.django_db
META = RequestMeta(ip="10.0.0.9", user_agent="pytest")

ACCESS_MODELS = sorted(
    (model for model in admin.site._registry if model._meta.app_label == "access"), key=lambda m: m._meta.model_name
)


def _admin_url(model: Any, view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def populated(applicant: Any, reviewer: Any, gated_release: Any) -> dict[str, Any]:
    """At least one row of every model, so each change list and change page has something to show."""
    application = factories.make_application(applicant, gated_release)
    from access.services.reviews import application_add_note, application_request_info

    application_add_note(application=application, reviewer=reviewer, body="Looks fine.", meta=META)
    application_request_info(application=application, reviewer=reviewer, message="Which tasks?", meta=META)
    application.refresh_from_db()
    other = factories.make_user("carol@cam.ac.uk", full_name="Carol", affiliation="Cambridge")
    grant = application_approve(
        application=factories.make_application(other, gated_release, full_name="Carol"), reviewer=reviewer, meta=META
    )
    key, _ = api_key_create(user=applicant, name="laptop")
    RejectionTemplate.objects.create(title="Incomplete", body="Dear {name}, please complete the form.")
    return {"application": application, "grant": grant, "key": key}


def test_every_access_model_is_registered() -> None:
    from django.apps import apps

    registered = {model for model in admin.site._registry}
    missing = [model.__name__ for model in apps.get_app_config("access").get_models() if model not in registered]
    assert missing == []


@pytest.mark.parametrize("model", ACCESS_MODELS, ids=lambda m: m._meta.model_name)
def test_superuser_sees_each_changelist_and_change_page(
    client: Any, admin: Any, populated: dict[str, Any], model: Any
) -> None:
    login(client, admin)
    response = client.get(_admin_url(model, "changelist"))
    assert response.status_code == 200
    assert response.context["cl"].result_count == model._default_manager.count()
    first = model._default_manager.order_by("pk").first()
    assert first is not None, f"the fixture made no {model.__name__}"
    assert client.get(_admin_url(model, "change", first.pk)).status_code == 200


def test_changelist_search_and_filters_work(client: Any, admin: Any, populated: dict[str, Any]) -> None:
    from access.models import Application

    login(client, admin)
    response = client.get(_admin_url(Application, "changelist"), {"q": "heidelberg", "status__exact": "needs_info"})
    assert [row.pk for row in response.context["cl"].result_list] == [populated["application"].pk]


def test_non_staff_cannot_use_the_admin(client: Any, applicant: Any, reviewer: Any) -> None:
    for person in (applicant, reviewer):
        login(client, person)
        response = client.get(_admin_url(AuditEvent, "changelist"))
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_audit_events_are_read_only(client: Any, admin: Any, populated: dict[str, Any]) -> None:
    login(client, admin)
    model_admin = admin_site_model(AuditEvent)
    request = _request(admin)
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request)
    assert not model_admin.has_delete_permission(request)
    event = AuditEvent.objects.order_by("pk").first()
    assert client.get(_admin_url(AuditEvent, "add")).status_code == 403
    assert client.get(_admin_url(AuditEvent, "delete", event.pk)).status_code == 403
    before = (event.action, event.target_id)
    client.post(_admin_url(AuditEvent, "change", event.pk), {"action": "tampered", "target_id": "0"})
    event.refresh_from_db()
    assert (event.action, event.target_id) == before
    response = client.post(
        _admin_url(AuditEvent, "changelist"),
        {
            "action": "delete_selected",
            "_selected_action": [event.pk],
        },
    )
    assert AuditEvent.objects.filter(pk=event.pk).exists()
    assert "delete_selected" not in str(response.content)


def test_api_key_hash_is_read_only(client: Any, admin: Any, populated: dict[str, Any]) -> None:
    key = populated["key"]
    login(client, admin)
    html = client.get(_admin_url(ApiKey, "change", key.pk)).content.decode()
    assert key.key_hash in html and 'name="key_hash"' not in html
    assert client.get(_admin_url(ApiKey, "add")).status_code == 403


def test_grant_revoke_action_goes_through_the_service(client: Any, admin: Any, populated: dict[str, Any]) -> None:
    grant = populated["grant"]
    assert release_access_check(user=grant.user, release=grant.release).allowed
    login(client, admin)
    url = _admin_url(Grant, "changelist")
    client.post(url, {"action": "revoke_grants", "_selected_action": [grant.pk], "reason": ""}, follow=True)
    assert Grant.objects.get(pk=grant.pk).status == GrantStatus.ACTIVE  # no reason, nothing revoked
    response = client.post(
        url, {"action": "revoke_grants", "_selected_action": [grant.pk], "reason": "Licence breach."}, follow=True
    )
    assert "1 grant(s) revoked." in response.content.decode()
    grant.refresh_from_db()
    assert (
        grant.status == GrantStatus.REVOKED and grant.revoked_by == admin and grant.revoke_reason == "Licence breach."
    )
    assert AuditEvent.objects.filter(action="grant.revoke", actor=admin, target_id=str(grant.pk)).exists()
    assert Notification.objects.filter(user=grant.user, subject__contains="revoked").exists()
    assert release_access_check(user=grant.user, release=grant.release).reason == "grant_revoked"


def test_new_license_version_is_published_through_the_service(client: Any, admin: Any, gated_release: Any) -> None:
    license_ = gated_release.license
    login(client, admin)
    existing = license_.versions.count()
    response = client.post(
        _admin_url(License, "change", license_.pk),
        {
            "slug": license_.slug,
            "name": license_.name,
            "versions-TOTAL_FORMS": existing + 1,
            "versions-INITIAL_FORMS": existing,
            "versions-MIN_NUM_FORMS": 0,
            "versions-MAX_NUM_FORMS": 1000,
            **{f"versions-{i}-id": v.pk for i, v in enumerate(license_.versions.order_by("-published_at", "-pk"))},
            **{f"versions-{i}-license": license_.pk for i in range(existing + 1)},
            f"versions-{existing}-version": "2.0",
            f"versions-{existing}-text": "Second text.",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    license_.refresh_from_db()
    assert License.objects.get(pk=license_.pk).current_version.version == "2.0"
    assert AuditEvent.objects.filter(action="license.publish", actor=admin, after__version="2.0").exists()
    assert LicenseVersion.objects.filter(license=license_).count() == existing + 1


def test_add_user_with_email_and_password(client: Any, admin: Any) -> None:
    login(client, admin)
    add = _admin_url(User, "add")
    page = client.get(add).content.decode()
    assert 'name="email"' in page and 'name="username"' not in page
    response = client.post(
        add,
        {
            "email": "New.Operator@Release.example",
            "usable_password": "true",
            "password1": factories.PASSWORD,
            "password2": factories.PASSWORD,
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    user = User.objects.get(email="new.operator@release.example")
    assert user.check_password(factories.PASSWORD)
    duplicate = client.post(
        add,
        {
            "email": "new.operator@release.example",
            "usable_password": "true",
            "password1": factories.PASSWORD,
            "password2": factories.PASSWORD,
        },
    )
    assert duplicate.status_code == 200 and "already exists" in duplicate.content.decode()


def test_user_change_page_has_no_username(client: Any, admin: Any, applicant: Any) -> None:
    login(client, admin)
    html = client.get(_admin_url(User, "change", applicant.pk)).content.decode()
    assert 'name="email"' in html and 'name="full_name"' in html and 'name="username"' not in html


# --- helpers ----------------------------------------------------------------------------------


def admin_site_model(model: Any) -> Any:
    return admin.site._registry[model]


def _request(user: Any) -> Any:
    from django.test import RequestFactory

    request = RequestFactory().get("/admin/")
    request.user = user
    return request

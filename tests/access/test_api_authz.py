"""Who may call what: every API route × every persona, with the exact status each gets.

The owner's application is `applicant`'s; everyone else sees 404 on it through the applicant
endpoints (no existence leak); non-reviewers get 403 on the review API; anonymous callers get 401
everywhere except the public catalog. `test_matrix_covers_every_route` fails when a route or a
method is added to access/api/urls.py without a row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.urls import URLPattern, reverse
from rest_framework.test import APIClient

from access.api import urls as api_urls
from access.models import ApiKey, Application, ApplicationStatus
from access.services.api_keys import api_key_create
from access.services.audit import RequestMeta
from access.services.reviews import application_request_info
from tests import factories

pytestmark = pytest.mark.django_db
META = RequestMeta(ip="10.0.0.7", user_agent="pytest")
PERSONAS = ["anonymous", "applicant", "other_applicant", "reviewer", "admin"]


@dataclass
class World:
    application: Application
    key: ApiKey
    release_slug: str
    license_version_id: int
    open_slug: str
    open_license_version_id: int


@dataclass(frozen=True)
class Row:
    name: str
    method: str
    args: Callable[[World], list[Any]] = lambda world: []
    body: Callable[[World], dict[str, Any]] = lambda world: {}
    # Expected status for each persona; `state` is what the owner's application looks like first.
    expect: dict[str, int] = field(default_factory=dict)
    state: str = ApplicationStatus.SUBMITTED

    @property
    def id(self) -> str:
        return f"{self.method} {self.name}"


def everyone(status: int) -> dict[str, int]:
    return {persona: status for persona in PERSONAS}


def signed_in(status: int, **overrides: int) -> dict[str, int]:
    return {**everyone(status), "anonymous": 401, **overrides}


def owner_only(status: int) -> dict[str, int]:
    return {"anonymous": 401, "applicant": status, "other_applicant": 404, "reviewer": 404, "admin": 404}


def reviewers_only(status: int) -> dict[str, int]:
    return {"anonymous": 401, "applicant": 403, "other_applicant": 403, "reviewer": status, "admin": status}


def application_id(world: World) -> list[Any]:
    return [world.application.pk]


def new_application(world: World) -> dict[str, Any]:
    return {
        "release": world.release_slug,
        "full_name": "Someone",
        "affiliation": "Some University",
        "organization_type": "academic",
        "role": "Researcher",
        "country": "DE",
        "research_purpose": factories.RESEARCH_PURPOSE,
        "intended_use": "Evaluation.",
        "publications": [],
        "license_version_id": world.license_version_id,
        "accept_license": True,
        "non_commercial_attested": True,
    }


MATRIX = [
    # Catalog: public.
    Row("releases", "get", expect=everyone(200)),
    Row("release", "get", args=lambda w: [w.release_slug], expect=everyone(200)),
    Row("release-license", "get", args=lambda w: [w.release_slug], expect=everyone(200)),
    Row("families", "get", expect=everyone(200)),
    Row(
        "release-license-accept",
        "post",
        args=lambda w: [w.open_slug],
        body=lambda w: {"license_version_id": w.open_license_version_id},
        expect=signed_in(201),
    ),
    Row("release-access", "get", args=lambda w: [w.release_slug], expect=signed_in(200)),
    # Applicant: one's own only.
    Row("applications", "get", expect=signed_in(200)),
    # The owner already has an open application for this release: a second one is a conflict.
    Row("applications", "post", body=new_application, expect=signed_in(201, applicant=409)),
    Row("application", "get", args=application_id, expect=owner_only(200)),
    Row("application-messages", "get", args=application_id, expect=owner_only(200)),
    Row(
        "application-answer",
        "post",
        args=application_id,
        body=lambda w: {"message": "Here it is."},
        expect=owner_only(200),
        state=ApplicationStatus.NEEDS_INFO,
    ),
    Row("application-withdraw", "post", args=application_id, expect=owner_only(200)),
    # Review: reviewers (and superusers) only.
    Row("review-queue", "get", expect=reviewers_only(200)),
    Row("review-detail", "get", args=application_id, expect=reviewers_only(200)),
    Row("review-start", "post", args=application_id, expect=reviewers_only(200)),
    Row("review-approve", "post", args=application_id, expect=reviewers_only(200)),
    Row("review-reject", "post", args=application_id, body=lambda w: {"reason": "No."}, expect=reviewers_only(200)),
    Row(
        "review-request-info",
        "post",
        args=application_id,
        body=lambda w: {"message": "Why?"},
        expect=reviewers_only(200),
    ),
    Row("review-notes", "post", args=application_id, body=lambda w: {"body": "Note."}, expect=reviewers_only(201)),
    Row(
        "review-bulk",
        "post",
        body=lambda w: {"ids": [w.application.pk], "decision": "approve"},
        expect=reviewers_only(200),
    ),
    Row("review-metrics", "get", expect=reviewers_only(200)),
    # Grants and API keys: one's own.
    Row("grants", "get", expect=signed_in(200)),
    Row("api-keys", "get", expect=signed_in(200)),
    Row("api-keys", "post", body=lambda w: {"name": "ci"}, expect=signed_in(201)),
    Row("api-key-revoke", "post", args=lambda w: [w.key.pk], expect=owner_only(200)),
]


@pytest.fixture
def world(applicant: Any, reviewer: Any, gated_release: Any, open_release: Any) -> World:
    application = factories.make_application(applicant, gated_release)
    key, _ = api_key_create(user=applicant, name="owner's key")
    return World(
        application=application,
        key=key,
        release_slug=gated_release.slug,
        license_version_id=gated_release.license.current_version.pk,
        open_slug=open_release.slug,
        open_license_version_id=open_release.license.current_version.pk,
    )


def client_for(persona: str, request: pytest.FixtureRequest) -> APIClient:
    client = APIClient()
    if persona != "anonymous":
        _, raw = api_key_create(user=request.getfixturevalue(persona), name="matrix")
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


@pytest.mark.parametrize("persona", PERSONAS)
@pytest.mark.parametrize("row", MATRIX, ids=lambda row: row.id)
def test_matrix(row: Row, persona: str, world: World, reviewer: Any, request: pytest.FixtureRequest) -> None:
    if row.state == ApplicationStatus.NEEDS_INFO:
        application_request_info(application=world.application, reviewer=reviewer, message="Which data?", meta=META)
    client = client_for(persona, request)
    url = reverse(f"api:{row.name}", args=row.args(world))
    response = getattr(client, row.method)(url, row.body(world), format="json")
    expected = row.expect[persona]
    assert response.status_code == expected, (persona, row.id, response.content[:300])
    if expected >= 400:
        # The one error shape, whoever is refused.
        codes = {401: "not_authenticated", 403: "not_allowed", 404: "not_found", 409: "conflict"}
        assert response.json()["code"] == codes[expected] and response.json()["detail"]


def test_refusals_change_nothing(world: World, other_applicant: Any, request: pytest.FixtureRequest) -> None:
    """A 403/404 on a state-changing endpoint leaves the row as it was."""
    for name in ("application-withdraw", "review-approve", "review-reject"):
        client_for("other_applicant", request).post(
            reverse(f"api:{name}", args=[world.application.pk]), {"reason": "x"}, format="json"
        )
    client_for("other_applicant", request).post(reverse("api:api-key-revoke", args=[world.key.pk]))
    world.application.refresh_from_db()
    world.key.refresh_from_db()
    assert world.application.status == ApplicationStatus.SUBMITTED and world.application.version == 1
    assert world.key.revoked_at is None


def _routes() -> set[tuple[str, str]]:
    routes = set()
    for pattern in api_urls.urlpatterns:
        assert isinstance(pattern, URLPattern), "access.api.urls must stay flat so this test can read it"
        view_class = pattern.callback.view_class  # type: ignore[attr-defined]
        for method in ("get", "post", "put", "patch", "delete"):
            if hasattr(view_class, method):
                routes.add((pattern.name, method))
    return routes


def test_matrix_covers_every_route() -> None:
    covered = {(row.name, row.method) for row in MATRIX}
    missing = _routes() - covered
    assert not missing, f"Add these (url name, method) pairs to MATRIX: {sorted(missing)}"
    stale = covered - _routes()
    assert not stale, f"MATRIX names routes that no longer exist: {sorted(stale)}"
    for row in MATRIX:
        assert set(row.expect) == set(PERSONAS), f"{row.id} must give an expected status for every persona"

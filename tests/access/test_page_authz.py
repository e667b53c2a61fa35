"""The authorization matrix for every page of the portal: anonymous, applicant (the owner), another
applicant, reviewer and admin, against every URL in access/urls/*.py.

A new URL that is not listed here fails `test_every_page_is_in_the_matrix`.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, reverse

from access.services.api_keys import api_key_create
from access.services.audit import RequestMeta
from access.services.reviews import application_approve
from tests import factories
from tests.authz import Route as Page
from tests.authz import assert_outcome, client_as
from tests.authz import no_args as _none

PERSONAS = ("anonymous", "applicant", "other_applicant", "reviewer", "admin")
OK = {200, 302, 400}  # 400: a POST with an empty body is refused as bad input, after authorization

# Expected outcome per persona: "ok" (any of OK, and for a redirect not to the login page),
# "login" (302 to the login page), 403 or 404.
PUBLIC = dict.fromkeys(PERSONAS, "ok")
SIGNED_IN = {"anonymous": "login", "applicant": "ok", "other_applicant": "ok", "reviewer": "ok", "admin": "ok"}
OWNER_OR_REVIEWER = {"anonymous": "login", "applicant": "ok", "other_applicant": 404, "reviewer": "ok", "admin": "ok"}
OWNER_ONLY = {"anonymous": "login", "applicant": "ok", "other_applicant": 404, "reviewer": 404, "admin": 404}
REVIEWERS = {"anonymous": "login", "applicant": 403, "other_applicant": 403, "reviewer": "ok", "admin": "ok"}


MATRIX = [
    Page("catalog", "get", _none, PUBLIC),
    Page("release-detail", "get", lambda o: [o["release"].slug], PUBLIC),
    Page("release-license", "get", lambda o: [o["release"].slug], PUBLIC),
    Page("release-apply", "get", lambda o: [o["release"].slug], SIGNED_IN),
    Page("signup", "get", _none, PUBLIC),
    Page("login", "get", _none, PUBLIC),
    Page("logout", "post", _none, PUBLIC),
    Page("verify-resend", "post", _none, SIGNED_IN),
    Page("verify-email", "get", lambda o: ["not-a-token"], PUBLIC),
    Page("password_reset", "get", _none, PUBLIC),
    Page("password_reset_done", "get", _none, PUBLIC),
    Page("password_reset_confirm", "get", lambda o: ["MQ", "bad-token"], PUBLIC),
    Page("password_reset_complete", "get", _none, PUBLIC),
    Page("profile", "get", _none, SIGNED_IN),
    Page("api-keys", "get", _none, SIGNED_IN),
    Page("api-key-revoke", "post", lambda o: [o["api_key"].pk], OWNER_ONLY),
    Page("my-applications", "get", _none, SIGNED_IN),
    Page("application-detail", "get", lambda o: [o["application"].pk], OWNER_OR_REVIEWER),
    Page("application-answer", "post", lambda o: [o["application"].pk], OWNER_ONLY),
    Page("application-withdraw", "post", lambda o: [o["application"].pk], OWNER_ONLY),
    Page("grant-renew", "get", lambda o: [o["grant"].pk], OWNER_ONLY),
    Page("notifications", "get", _none, SIGNED_IN),
    Page("review-queue", "get", _none, REVIEWERS),
    Page("review-bulk", "post", _none, REVIEWERS),
    Page("review-audit-csv", "get", _none, REVIEWERS),
    Page("review-grants", "get", _none, REVIEWERS),
    Page("review-grant-revoke", "post", lambda o: [o["grant"].pk], REVIEWERS),
    Page("review-detail", "get", lambda o: [o["application"].pk], REVIEWERS),
    Page("review-start", "post", lambda o: [o["application"].pk], REVIEWERS),
    Page("review-approve", "post", lambda o: [o["application"].pk], REVIEWERS),
    Page("review-reject", "post", lambda o: [o["application"].pk], REVIEWERS),
    Page("review-request-info", "post", lambda o: [o["application"].pk], REVIEWERS),
    Page("review-note", "post", lambda o: [o["application"].pk], REVIEWERS),
    Page("review-application-audit-csv", "get", lambda o: [o["application"].pk], REVIEWERS),
    Page("home", "get", _none, PUBLIC),
    Page("healthz", "get", _none, PUBLIC),
]


def _names(patterns: list[Any]) -> set[str]:
    names: set[str] = set()
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            names |= _names(pattern.url_patterns)
        elif isinstance(pattern, URLPattern) and pattern.name:
            names.add(pattern.name)
    return names


def test_every_page_is_in_the_matrix() -> None:
    from access.urls import accounts, applicant, catalog, review

    defined = set().union(*(_names(module.urlpatterns) for module in (accounts, applicant, catalog, review)))
    defined |= {"home", "healthz"}
    assert defined == {page.name for page in MATRIX}


@pytest.fixture
def objects(db: Any, applicant: Any, reviewer: Any, gated_release: Any) -> dict[str, Any]:
    # The applicant owns: an approved application with its grant, a second open application, a key.
    approved = factories.make_application(applicant, gated_release)
    grant = application_approve(application=approved, reviewer=reviewer, meta=RequestMeta())
    other_release = factories.make_release(slug="llama-7b", name="LLaMA-7B", gated=True)
    open_application = factories.make_application(applicant, other_release)
    key, _ = api_key_create(user=applicant, name="laptop")
    return {"release": gated_release, "application": open_application, "grant": grant, "api_key": key}


@pytest.mark.parametrize("page", MATRIX, ids=lambda p: p.name)
@pytest.mark.parametrize("persona", PERSONAS)
def test_page_authorization(page: Page, persona: str, objects: dict[str, Any], request: pytest.FixtureRequest) -> None:
    client = client_as(persona, request)
    url = reverse(page.name, args=page.args(objects))
    response = getattr(client, page.method)(url)
    assert_outcome(response, page.expect[persona], url=url, persona=persona, ok=OK)

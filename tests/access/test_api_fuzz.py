"""Schema-driven fuzzing: every operation in /api/schema/, valid and invalid input, never a 5xx.

Schemathesis generates requests from the OpenAPI schema and sends them through the real WSGI
application in this thread, so the requests see the test's database rows (the test transaction is
rolled back afterwards, as for any `django_db` test). Bounded: a fixed number of examples per
operation, derandomized, so the file is deterministic and quick.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup

from access.models import ApiKey
from access.services.api_keys import api_key_create
from access.services.audit import RequestMeta
from access.services.reviews import application_approve, application_request_info
from tests import factories

pytestmark = pytest.mark.django_db
META = RequestMeta(ip="10.0.0.5", user_agent="pytest")
EXAMPLES_PER_OPERATION = 25
# Revoking keys last: the fuzzer may well revoke the very key it is calling with.
LAST = ("api_keys_revoke",)


@pytest.fixture
def wsgi_app() -> Iterator[Any]:
    """portal.wsgi's application, keeping the test's connection (and its transaction) open.

    Django closes "old" connections at the start and end of each request; inside a test transaction
    that would close it under the test. Django's own test client disconnects the same handlers.
    """
    from portal.wsgi import application

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield application
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def rows(applicant: Any, other_applicant: Any, reviewer: Any, gated_release: Any, open_release: Any) -> dict[str, Any]:
    """Catalog rows and applications in several states, so real ids and slugs are in play."""
    submitted = factories.make_application(applicant, gated_release)
    asked = factories.make_application(other_applicant, gated_release, full_name="Bob Brown", country="CH")
    application_request_info(application=asked, reviewer=reviewer, message="Which data?", meta=META)
    carol = factories.make_user("carol@mit.edu", full_name="Carol Chen", affiliation="MIT")
    approved = factories.make_application(carol, gated_release, full_name="Carol Chen", affiliation="MIT")
    application_approve(application=approved, reviewer=reviewer, meta=META)
    spare_key, _ = api_key_create(user=applicant, name="spare")
    return {
        "application_ids": [submitted.pk, asked.pk, approved.pk],
        "slugs": [gated_release.slug, open_release.slug],
        "key_ids": [spare_key.pk],
        "valid_application": {
            "release": gated_release.slug,
            "full_name": "Dana Diaz",
            "affiliation": "Universidad de Chile",
            "organization_type": "academic",
            "role": "Postdoc",
            "country": "CL",
            "research_purpose": factories.RESEARCH_PURPOSE,
            "intended_use": "Evaluation.",
            "publications": ["10.1234/x.1"],
            "license_version_id": gated_release.license.current_version.pk,
            "accept_license": True,
            "non_commercial_attested": True,
        },
    }


def _strategy(operation: Any, rows: dict[str, Any]) -> st.SearchStrategy[Any]:
    strategies = [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)]
    path_names = {parameter.name for parameter in operation.path_parameters}
    known = {"application_id": rows["application_ids"], "slug": rows["slugs"], "key_id": rows["key_ids"]}
    for name in path_names & set(known):
        for value in known[name]:
            # Same generated input, aimed at rows that exist, so handlers get past the 404.
            strategies.append(operation.as_strategy(GenerationMode.POSITIVE, path_parameters={name: value}))
    if operation.definition.raw.get("operationId") == "applications_create":
        # Random text rarely passes the service's rules (ISO country, 200-character purpose, the current
        # license version): also send a valid application, so the 201 and 409 paths are fuzzed too.
        strategies.append(
            operation.as_strategy(
                GenerationMode.POSITIVE, body=rows["valid_application"], media_type="application/json"
            )
        )
    return st.one_of(strategies)


def _fuzz(schema: Any, rows: dict[str, Any], headers: dict[str, str]) -> list[str]:
    operations = [result.ok() for result in schema.get_all_operations()]
    operations.sort(key=lambda operation: operation.definition.raw.get("operationId") in LAST)
    assert len(operations) >= 25, "the schema lost operations"
    failures: list[str] = []
    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=_strategy(operation, rows))
        def check(case: Any) -> None:
            response = case.call(headers=headers)
            case.validate_response(response, checks=[not_a_server_error])

        try:
            check()
        except FailureGroup as exc:  # report every failing operation, not just the first
            failures.append(f"{operation.label}: {exc}")
    return failures


@pytest.mark.parametrize("persona", ["reviewer", "applicant"])
def test_no_input_makes_a_server_error(
    persona: str, wsgi_app: Any, rows: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/schema/", wsgi_app)
    user = request.getfixturevalue(persona)
    _, raw = api_key_create(user=user, name="fuzz")
    failures = _fuzz(schema, rows, {"Authorization": f"Bearer {raw}"})
    assert not failures, "\n\n".join(failures)
    # The fuzzer really was signed in (and not, say, refused everywhere with 401).
    assert ApiKey.objects.filter(user=user, name="fuzz", last_used_at__isnull=False).exists()

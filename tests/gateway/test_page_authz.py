"""The authorization matrix for every gateway route, pages and API: anonymous, an applicant without a
grant, the grant holder, another applicant, a reviewer (an operator) and an admin (superuser).

The objects: a deployment of the gated release (its replica refuses connections, so an admitted API
call ends in 503), the holder's grant. A new gateway route that is not listed here fails
`test_every_gateway_route_is_in_the_matrix`, which walks the whole URL resolver.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from tests.artifacts.conftest import grant_access
from tests.authz import (
    OPERATOR_LISTS,
    OPERATOR_OBJECT,
    PERSONAS,
    SIGNED_IN,
    Route,
    assert_outcome,
    client_as,
    routes_of_app,
)
from tests.authz import no_args as _none
from tests.gateway.conftest import add_deployment, closed_port_url

OK = {200, 302, 400}  # 400: a POST with an empty body is refused as bad input, after authorization

# The playground: whoever may use a served model now.
USERS_OF_A_SERVED_MODEL = {
    "anonymous": "login",
    "applicant_no_grant": 403,
    "holder": "ok",
    "other_applicant": 403,
    "reviewer": 403,
    "admin": 403,
}
# Adding and removing engines: superusers (or the model permission), not reviewers.
MANAGERS = {**OPERATOR_LISTS, "reviewer": 403}
MANAGERS_OBJECT = {**OPERATOR_OBJECT, "reviewer": 403}
# The API never redirects: 401 without credentials (a session counts, as for the playground).
API_COMPLETIONS = {
    "anonymous": 401,
    "applicant_no_grant": 403,
    "holder": 503,  # admitted; the only replica refuses connections
    "other_applicant": 403,
    "reviewer": 403,
    "admin": 403,
}
API_LIST = {**dict.fromkeys(PERSONAS, 200), "anonymous": 401}
API_MODEL = {**dict.fromkeys(PERSONAS, 404), "anonymous": 401, "holder": 200}
EVERYONE_404 = dict.fromkeys(PERSONAS, 404)


def _deployment(objects: dict[str, Any]) -> list[Any]:
    return [objects["deployment"].pk]


MATRIX = [
    Route("v1-completions", "post", _none, API_COMPLETIONS),
    Route("v1-models", "get", _none, API_LIST),
    Route("v1-model", "get", lambda o: ["opt-175b"], API_MODEL),
    Route("v1-openapi", "get", _none, dict.fromkeys(PERSONAS, 200)),  # public: the API's shape, no data
    Route("v1-not-found", "get", lambda o: ["chat/completions"], EVERYONE_404),
    Route("playground", "get", _none, USERS_OF_A_SERVED_MODEL),
    Route("my-usage", "get", _none, SIGNED_IN),
    Route("gateway-deployments", "get", _none, OPERATOR_LISTS),
    Route("gateway-deployment-add", "get", _none, MANAGERS),
    Route("gateway-deployment-add", "post", _none, MANAGERS),
    Route("gateway-deployment", "get", _deployment, OPERATOR_OBJECT),
    Route("gateway-deployment-drain", "post", _deployment, OPERATOR_OBJECT),
    Route("gateway-deployment-remove", "post", _deployment, MANAGERS_OBJECT),
    Route("gateway-usage", "get", _none, OPERATOR_LISTS),
    Route("gateway-usage-csv", "get", _none, OPERATOR_LISTS),
    Route("gateway-grant-limits", "get", lambda o: [o["grant"].pk], OPERATOR_LISTS),
    Route("gateway-grant-limits", "post", lambda o: [o["grant"].pk], OPERATOR_LISTS),
]


def test_every_gateway_route_is_in_the_matrix() -> None:
    assert routes_of_app("gateway") == {route.name for route in MATRIX}


@pytest.fixture
def objects(
    db: Any, applicant: Any, other_applicant: Any, reviewer: Any, gated_release: Any, checkpoint: Any, secret_file: Any
) -> Any:
    grant = grant_access(applicant, gated_release, reviewer)
    deployment = add_deployment(gated_release, checkpoint, [closed_port_url()], secret_file)
    return {"grant": grant, "deployment": deployment}


@pytest.mark.parametrize("route", MATRIX, ids=lambda r: f"{r.name}-{r.method}")
@pytest.mark.parametrize("persona", PERSONAS)
def test_route_authorization(
    route: Route, persona: str, objects: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    client = client_as(persona, request)
    url = reverse(route.name, args=route.args(objects))
    if route.name == "v1-completions":
        body = json.dumps({"model": "opt-175b", "prompt": "hello"})
        response = client.post(url, data=body, content_type="application/json")
    else:
        response = getattr(client, route.method)(url)
    assert_outcome(response, route.expect[persona], url=url, persona=persona, ok=OK)


@pytest.mark.parametrize("number", [0, 2**31, 2**63, 10**30], ids=str)
def test_ids_out_of_range_are_404_never_500(number: int, objects: dict[str, Any], admin: Any) -> None:
    client = Client(raise_request_exception=False)
    client.force_login(admin)
    for route in MATRIX:
        if not route.args(objects) or route.name.startswith("v1-"):
            continue
        response = getattr(client, route.method)(reverse(route.name, args=[number]))
        assert response.status_code == 404, (route.name, number, response.status_code)

"""The authorization matrix for every artifacts route, pages and API: anonymous, an applicant without
a grant, the grant holder, another applicant (with a grant of their own to the same release), a
reviewer and an admin.

The objects are the holder's: a ready checkpoint of a gated release, the holder's grant, the
holder's signed link, and a reshard job of the checkpoint. A new artifacts route that is not listed
here fails `test_every_artifacts_route_is_in_the_matrix`, which walks the whole URL resolver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from artifacts.models import ReshardJob
from artifacts.signing import sign_link
from tests.artifacts.conftest import grant_access, make_checkpoint
from tests.authz import (
    API_SIGNED_IN,
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

OK = {200, 201, 302, 400}  # 400: a POST with an empty body is refused as bad input, after authorization

# Expected outcome per persona: "ok" (any of OK, and for a redirect not to the login page),
# "login" (302 to the login page), or a status code.
# A ready checkpoint of a gated release: whoever holds an active grant to the release.
GRANT_HOLDERS = {
    "anonymous": "login",
    "applicant_no_grant": 403,
    "holder": "ok",
    "other_applicant": "ok",
    "reviewer": 403,
    "admin": 403,
}
# The holder's signed link: a bearer token (curl, download.sh), refused to every other signed-in account.
LINK_OWNER = {
    "anonymous": "ok",
    "applicant_no_grant": 403,
    "holder": "ok",
    "other_applicant": 403,
    "reviewer": 403,
    "admin": 403,
}
# Operator pages and API_SIGNED_IN: tests/authz.py.
API_GRANT_HOLDERS = {**GRANT_HOLDERS, "anonymous": 401}
API_OPERATOR_OBJECT = {**OPERATOR_OBJECT, "anonymous": 401}


def _checkpoint(objects: dict[str, Any]) -> list[Any]:
    return [objects["checkpoint"].pk]


MATRIX = [
    Route("download-file", "get", lambda o: [o["token"]], LINK_OWNER),
    Route("downloads", "get", _none, SIGNED_IN),
    Route("downloads-checkpoint", "get", _checkpoint, GRANT_HOLDERS),
    Route("downloads-renew", "get", _checkpoint, GRANT_HOLDERS),
    Route("downloads-renew", "post", _checkpoint, GRANT_HOLDERS),
    Route("downloads-sha256sums", "get", _checkpoint, GRANT_HOLDERS),
    Route("downloads-md5sums", "get", _checkpoint, GRANT_HOLDERS),
    Route("downloads-manifest", "get", _checkpoint, GRANT_HOLDERS),
    Route("downloads-script", "get", _checkpoint, GRANT_HOLDERS),
    Route("checkpoint-index", "get", _none, OPERATOR_LISTS),
    Route("grant-downloads", "get", _none, OPERATOR_LISTS),
    Route("grant-downloads-detail", "get", lambda o: [o["grant"].pk], OPERATOR_LISTS),
    Route("grant-downloads-detail", "post", lambda o: [o["grant"].pk], OPERATOR_LISTS),
    Route("checkpoint-detail", "get", _checkpoint, OPERATOR_OBJECT),
    Route("checkpoint-progress", "get", _checkpoint, OPERATOR_OBJECT),
    Route("checkpoint-verify", "post", _checkpoint, OPERATOR_OBJECT),
    Route("checkpoint-reshard", "post", _checkpoint, OPERATOR_OBJECT),
    Route("checkpoint-reshard-jobs", "get", _checkpoint, OPERATOR_OBJECT),
    Route("reshard-job-cancel", "post", lambda o: [o["reshard_job"].pk], OPERATOR_OBJECT),
    Route("artifacts-api:checkpoints", "get", _none, API_SIGNED_IN),
    Route("artifacts-api:checkpoint", "get", _checkpoint, API_GRANT_HOLDERS),
    Route("artifacts-api:checkpoint-links", "post", _checkpoint, API_GRANT_HOLDERS),
    Route("artifacts-api:bundle-manifest", "get", _checkpoint, API_GRANT_HOLDERS),
    Route("artifacts-api:bundle-sha256sums", "get", _checkpoint, API_GRANT_HOLDERS),
    Route("artifacts-api:bundle-md5sums", "get", _checkpoint, API_GRANT_HOLDERS),
    Route("artifacts-api:bundle-script", "get", _checkpoint, API_GRANT_HOLDERS),
    Route("artifacts-api:checkpoint-reshard-jobs", "get", _checkpoint, API_OPERATOR_OBJECT),
    Route("artifacts-api:checkpoint-reshard-jobs", "post", _checkpoint, API_OPERATOR_OBJECT),
    Route("artifacts-api:reshard-job", "get", lambda o: [o["reshard_job"].pk], API_OPERATOR_OBJECT),
    Route("artifacts-api:reshard-job-cancel", "post", lambda o: [o["reshard_job"].pk], API_OPERATOR_OBJECT),
]


def test_every_artifacts_route_is_in_the_matrix() -> None:
    assert routes_of_app("artifacts") == {route.name for route in MATRIX}


@pytest.fixture
def objects(db: Any, tmp_path: Path, applicant: Any, other_applicant: Any, reviewer: Any, gated_release: Any) -> Any:
    checkpoint = make_checkpoint(gated_release, tmp_path)
    grant = grant_access(applicant, gated_release, reviewer)
    grant_access(other_applicant, gated_release, reviewer)
    row = checkpoint.files.get(path="model.safetensors")
    token, _ = sign_link(file_id=row.pk, user_id=applicant.pk, grant_id=grant.pk)
    reshard_job = ReshardJob.objects.create(
        source=checkpoint, target_format="native", tp_size=1, dtype="float32", job_key="authz-matrix"
    )
    return {"checkpoint": checkpoint, "grant": grant, "token": token, "reshard_job": reshard_job}


@pytest.mark.parametrize("route", MATRIX, ids=lambda r: f"{r.name}-{r.method}")
@pytest.mark.parametrize("persona", PERSONAS)
def test_route_authorization(
    route: Route, persona: str, objects: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    client = client_as(persona, request)
    url = reverse(route.name, args=route.args(objects))
    if route.name.startswith("artifacts-api:") and route.method == "post":
        response = client.post(url, {}, content_type="application/json")  # the API parses JSON only
    else:
        response = getattr(client, route.method)(url)
    assert_outcome(response, route.expect[persona], url=url, persona=persona, ok=OK)


@pytest.mark.parametrize("number", [0, 2**31, 2**63, 10**30], ids=str)
@pytest.mark.parametrize("persona", ["holder", "admin"])
def test_ids_out_of_range_are_404_never_500(
    number: int, persona: str, objects: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    """Every route with an id, with ids no row has (beyond int32, int64, any column): 404 (403 on the
    operator pages for the holder, who may not know whether the row exists), never a 500."""
    client = Client(raise_request_exception=False)
    client.force_login(request.getfixturevalue(persona))
    for route in MATRIX:
        if route.name == "download-file" or not route.args(objects):
            continue
        url = reverse(route.name, args=[number])
        if route.name.startswith("artifacts-api:") and route.method == "post":
            response = client.post(url, {}, content_type="application/json")
        else:
            response = getattr(client, route.method)(url)
        expected = {404, 403} if route.expect[persona] == 403 else {404}
        assert response.status_code in expected, (url, response.status_code)

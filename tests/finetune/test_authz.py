"""The authorization matrix for every fine-tuning route, pages and API: anonymous, an applicant without a
grant, the grant holder (who owns the job and the dataset), another applicant with a grant of their own to
the same release, a reviewer and an admin. A new finetune route that is not listed here fails
`test_every_finetune_route_is_in_the_matrix`, which walks the whole URL resolver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from finetune.models import DatasetFormat, TrainingDataset, TrainingJob
from jobs.models import JobStatus
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
    no_args,
    routes_of_app,
)

OK = {200, 201, 302, 400}  # 400: a POST with an empty body is refused as bad input, after authorization

OWNER_ONLY = {
    "anonymous": "login",
    "applicant_no_grant": 404,
    "holder": "ok",
    "other_applicant": 404,
    "reviewer": 404,
    "admin": 404,
}
API_OWNER_ONLY = {**OWNER_ONLY, "anonymous": 401}
API_OWNER_OR_OPERATOR = {**API_OWNER_ONLY, "reviewer": "ok", "admin": "ok"}


def _job(objects: dict[str, Any]) -> list[Any]:
    return [objects["job"].pk]


def _dataset(objects: dict[str, Any]) -> list[Any]:
    return [objects["dataset"].pk]


MATRIX = [
    Route("finetune-jobs", "get", no_args, SIGNED_IN),
    Route("finetune-submit", "get", no_args, SIGNED_IN),
    Route("finetune-submit", "post", no_args, SIGNED_IN),
    Route("finetune-dataset-upload", "get", no_args, SIGNED_IN),
    Route("finetune-dataset-upload", "post", no_args, SIGNED_IN),
    Route("finetune-dataset", "get", _dataset, OWNER_ONLY),
    Route("finetune-job", "get", _job, OWNER_ONLY),
    Route("finetune-job-cancel", "post", _job, OWNER_ONLY),
    Route("finetune-operator-jobs", "get", no_args, OPERATOR_LISTS),
    Route("finetune-operator-job", "get", _job, OPERATOR_OBJECT),
    Route("finetune-operator-pause", "post", _job, OPERATOR_OBJECT),
    Route("finetune-operator-resume", "post", _job, OPERATOR_OBJECT),
    Route("finetune-operator-cancel", "post", _job, OPERATOR_OBJECT),
    Route("finetune-api:training-jobs", "get", no_args, API_SIGNED_IN),
    Route("finetune-api:training-jobs", "post", no_args, API_SIGNED_IN),
    Route("finetune-api:training-job", "get", _job, API_OWNER_OR_OPERATOR),
    Route("finetune-api:training-job-cancel", "post", _job, API_OWNER_OR_OPERATOR),
    Route("finetune-api:training-job-logbook", "get", _job, API_OWNER_OR_OPERATOR),
    Route("finetune-api:training-datasets", "get", no_args, API_SIGNED_IN),
    Route("finetune-api:training-datasets", "post", no_args, API_SIGNED_IN),
    Route("finetune-api:training-dataset", "get", _dataset, API_OWNER_ONLY),
]


def test_every_finetune_route_is_in_the_matrix() -> None:
    assert routes_of_app("finetune") == {route.name for route in MATRIX}


@pytest.fixture
def objects(db: Any, tmp_path: Path, applicant: Any, other_applicant: Any, reviewer: Any, gated_release: Any) -> Any:
    checkpoint = make_checkpoint(gated_release, tmp_path)
    grant = grant_access(applicant, gated_release, reviewer)
    grant_access(other_applicant, gated_release, reviewer)
    dataset = TrainingDataset.objects.create(
        owner=applicant,
        checkpoint=checkpoint,
        name="docs.jsonl",
        input_format=DatasetFormat.JSONL,
        status=JobStatus.SUCCEEDED,
        size_bytes=10,
        token_count=100,
    )
    job = TrainingJob.objects.create(
        owner=applicant,
        base_checkpoint=checkpoint,
        release=gated_release,
        grant=grant,
        dataset=dataset,
        hyperparameters={"steps": 10, "lr": 1e-5},
        max_hours=1,
        total_steps=10,
    )
    return {"checkpoint": checkpoint, "dataset": dataset, "job": job}


def _call(client: Client, route: Route, url: str) -> Any:
    if route.name == "finetune-api:training-datasets" and route.method == "post":
        return client.post(url, {})  # multipart, as uploads are
    if route.name.startswith("finetune-api:") and route.method == "post":
        return client.post(url, {}, content_type="application/json")
    return getattr(client, route.method)(url)


@pytest.mark.parametrize("route", MATRIX, ids=lambda r: f"{r.name}-{r.method}")
@pytest.mark.parametrize("persona", PERSONAS)
def test_route_authorization(
    route: Route, persona: str, objects: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    client = client_as(persona, request)
    url = reverse(route.name, args=route.args(objects))
    assert_outcome(_call(client, route, url), route.expect[persona], url=url, persona=persona, ok=OK)


@pytest.mark.parametrize("number", [0, 2**31, 2**63, 10**30], ids=str)
@pytest.mark.parametrize("persona", ["holder", "admin"])
def test_ids_out_of_range_are_404_never_500(
    number: int, persona: str, objects: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    client = Client(raise_request_exception=False)
    client.force_login(request.getfixturevalue(persona))
    for route in MATRIX:
        if not route.args(objects):
            continue
        response = _call(client, route, reverse(route.name, args=[number]))
        expected = {404, 403} if route.expect[persona] == 403 else {404}
        assert response.status_code in expected, (route.name, response.status_code)

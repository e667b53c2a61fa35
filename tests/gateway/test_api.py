"""The API's doors, through Django's test client (no engine needed: the deployment's only replica
refuses connections, so an admitted request ends in 503). Every refusal is in OpenAI's error shape,
names its cause, and leaves a usage row when the caller is known."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from access.services.api_keys import api_key_revoke
from access.services.audit import RequestMeta
from access.services.grants import grant_revoke
from gateway.models import GrantLimits, Replica, ReplicaStatus, UsageRecord, UsageStatus
from tests import factories
from tests.gateway.conftest import add_deployment, api_key_for, closed_port_url

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(gated_release: Any, checkpoint: Any, secret_file: Any) -> Any:
    return add_deployment(gated_release, checkpoint, [closed_port_url()], secret_file)


@pytest.fixture
def key(applicant: Any) -> str:
    return api_key_for(applicant)[1]


def post(raw_key: str | None, body: Any, client: Client | None = None) -> Any:
    headers = {"HTTP_AUTHORIZATION": f"Bearer {raw_key}"} if raw_key else {}
    data = body if isinstance(body, str) else json.dumps(body)
    return (client or Client()).post("/v1/completions", data=data, content_type="application/json", **headers)


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


BODY = {"model": "opt-175b", "prompt": "hello"}


def test_no_key_unknown_key_revoked_and_expired_keys_are_401(applicant: Any, deployment: Any) -> None:
    assert post(None, BODY).status_code == 401
    response = post("orp_not-a-key", BODY)
    assert response.status_code == 401 and response["WWW-Authenticate"] == "Bearer"
    assert error_of(response)["code"] == "invalid_api_key"
    revoked, raw_revoked = api_key_for(applicant)
    api_key_revoke(key=revoked, actor=applicant)
    assert "revoked or expired" in error_of(post(raw_revoked, BODY))["message"]
    expired, raw_expired = api_key_for(applicant, expires_at=timezone.now() + timedelta(seconds=1))
    type(expired).objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert post(raw_expired, BODY).status_code == 401
    assert UsageRecord.objects.count() == 0  # nobody to charge


def test_unknown_and_unserved_models_are_404(applicant: Any, key: str, deployment: Any, open_release: Any) -> None:
    response = post(key, {**BODY, "model": "gpt-5"})
    assert response.status_code == 404
    assert error_of(response)["code"] == "model_not_found" and error_of(response)["param"] == "model"
    # A real release without a deployment is not served either.
    assert post(key, {**BODY, "model": open_release.slug}).status_code == 404
    record = UsageRecord.objects.get(model="gpt-5")
    assert record.status == UsageStatus.REFUSED and record.http_status == 404 and record.release_id is None


def test_no_grant_revoked_and_expired_grants_are_403(
    applicant: Any, key: str, deployment: Any, reviewer: Any, holder_grant: Any
) -> None:
    other = factories.make_user("carol@uni-mannheim.de")
    _, other_key = api_key_for(other)
    refused = post(other_key, BODY)
    assert refused.status_code == 403 and error_of(refused)["code"] == "no_grant"
    assert error_of(refused)["type"] == "permission_error"

    assert post(key, BODY).status_code == 503  # the holder passes every door; the engine is down
    grant_revoke(grant=holder_grant, actor=reviewer, reason="misuse", meta=RequestMeta())
    revoked = post(key, BODY)
    assert revoked.status_code == 403 and error_of(revoked)["code"] == "grant_revoked"
    record = UsageRecord.objects.filter(user=applicant).latest("pk")
    assert (record.status, record.http_status, record.error_code) == ("refused", 403, "grant_revoked")
    assert record.release_id == deployment.release_id


def test_expired_grant_is_403(applicant: Any, key: str, deployment: Any, holder_grant: Any) -> None:
    type(holder_grant).objects.filter(pk=holder_grant.pk).update(
        starts_at=timezone.now() - timedelta(days=2), expires_at=timezone.now() - timedelta(days=1)
    )
    assert error_of(post(key, BODY))["code"] == "grant_expired"


def test_bad_bodies_are_400_naming_the_field(applicant: Any, key: str, holder_grant: Any, deployment: Any) -> None:
    assert error_of(post(key, "not json"))["code"] == "invalid_json"
    assert error_of(post(key, [1, 2]))["code"] == "invalid_json"
    assert error_of(post(key, {"prompt": "x"}))["param"] == "model"
    assert error_of(post(key, {**BODY, "stream": "yes"}))["param"] == "stream"
    assert UsageRecord.objects.filter(user=applicant, http_status=400).count() == 4


def test_a_replica_that_refuses_connections_is_marked_failing_and_skipped(
    applicant: Any, key: str, holder_grant: Any, deployment: Any
) -> None:
    response = post(key, BODY)
    assert response.status_code == 503 and error_of(response)["code"] == "no_engine"
    replica = Replica.objects.get(deployment=deployment)
    assert replica.status == ReplicaStatus.FAILING and "connection failed" in replica.last_error
    record = UsageRecord.objects.get(user=applicant)
    assert record.status == UsageStatus.UNAVAILABLE and record.deployment_id is None
    # Now no replica may take requests: refused before any connection is tried.
    assert error_of(post(key, BODY))["code"] == "no_engine"


def test_tokens_per_day_quota_is_429_naming_the_limit(
    applicant: Any, key: str, holder_grant: Any, deployment: Any, settings: Any
) -> None:
    settings.GATEWAY_TOKENS_PER_DAY = 100
    now = timezone.now()
    for prompt, completion in [(30, 30), (20, 20)]:
        UsageRecord.objects.create(
            created_at=now, user=applicant, release=deployment.release, model="opt-175b", status="ok",
            http_status=200, prompt_tokens=prompt, completion_tokens=completion,
        )  # fmt: skip
    # Yesterday's tokens do not count.
    UsageRecord.objects.create(
        created_at=now - timedelta(days=1), user=applicant, release=deployment.release, model="opt-175b",
        status="ok", http_status=200, prompt_tokens=10_000,
    )  # fmt: skip
    response = post(key, BODY)
    assert response.status_code == 429
    error = error_of(response)
    assert error["code"] == "tokens_per_day" and "100 of 100 tokens" in error["message"]
    assert 0 < int(response["Retry-After"]) <= 86_400
    # An operator raises this grant's limit: admitted again (then 503, the engine being down).
    GrantLimits.objects.create(grant=holder_grant, tokens_per_day=1000)
    assert post(key, BODY).status_code == 503


def test_requests_per_minute_quota(applicant: Any, key: str, holder_grant: Any, deployment: Any) -> None:
    GrantLimits.objects.create(grant=holder_grant, requests_per_minute=2)
    Replica.objects.update(status=ReplicaStatus.HEALTHY)
    statuses = []
    for _ in range(3):
        statuses.append(post(key, BODY))
        Replica.objects.update(status=ReplicaStatus.HEALTHY)  # keep it "reachable" for the next try
    assert [r.status_code for r in statuses] == [503, 503, 429]
    error = error_of(statuses[2])
    assert error["code"] == "requests_per_minute" and "2 requests per minute" in error["message"]
    assert 1 <= int(statuses[2]["Retry-After"]) <= 60
    assert list(UsageRecord.objects.filter(user=applicant).order_by("pk").values_list("error_code", flat=True)) == [
        "no_engine", "no_engine", "requests_per_minute",
    ]  # fmt: skip


def test_concurrent_requests_quota(applicant: Any, key: str, holder_grant: Any, deployment: Any, settings: Any) -> None:
    import asyncio
    import time

    from gateway.counters import get_counters, scope_of

    GrantLimits.objects.create(grant=holder_grant, max_concurrent=2)
    counters = get_counters()
    scope = scope_of(user_id=applicant.pk, release_id=deployment.release_id)

    async def hold(count: int) -> None:  # two requests of the holder's still running elsewhere
        for index in range(count):
            await counters.admit(
                scope=scope, request_id=f"held{index}", requests_per_minute=100, max_concurrent=9, now=time.time()
            )

    asyncio.run(hold(2))
    response = post(key, BODY)
    assert response.status_code == 429 and error_of(response)["code"] == "concurrent_requests"
    assert "at most 2 requests at once" in error_of(response)["message"]


def test_session_requests_need_the_csrf_token(applicant: Any, holder_grant: Any, deployment: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(applicant)
    refused = post(None, BODY, client)
    assert refused.status_code == 403 and error_of(refused)["code"] == "csrf_failed"
    client.get("/playground/")  # sets the CSRF cookie
    token = client.cookies["csrftoken"].value
    response = client.post(
        "/v1/completions", data=json.dumps(BODY), content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert response.status_code == 503  # through every door; the engine is down
    record = UsageRecord.objects.get(user=applicant, http_status=503)
    assert record.api_key_id is None  # a session request


def test_models_lists_only_what_the_caller_may_use(
    applicant: Any, key: str, holder_grant: Any, deployment: Any, open_release: Any, checkpoint: Any, tmp_path: Any
) -> None:
    from tests.artifacts.conftest import make_checkpoint

    open_checkpoint = make_checkpoint(open_release, tmp_path, variant="open")
    add_deployment(open_release, open_checkpoint, [closed_port_url()], deployment.secret_file)
    client = Client()
    listed = client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}").json()
    # The open release needs its license accepted first.
    assert [model["id"] for model in listed["data"]] == ["opt-175b"]
    assert listed["object"] == "list" and listed["data"][0]["owned_by"] == "Meta AI"
    other = factories.make_user("dave@example.org")
    _, other_key = api_key_for(other)
    assert client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {other_key}").json()["data"] == []
    assert client.get("/v1/models/opt-175b", HTTP_AUTHORIZATION=f"Bearer {key}").json()["id"] == "opt-175b"
    assert client.get("/v1/models/opt-175b", HTTP_AUTHORIZATION=f"Bearer {other_key}").status_code == 404
    assert client.get("/v1/models").status_code == 401


def test_draining_and_removed_deployments_take_no_requests(
    applicant: Any, key: str, holder_grant: Any, deployment: Any
) -> None:
    deployment.draining = True
    deployment.save()
    assert error_of(post(key, BODY))["code"] == "no_engine"
    assert Client().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}").json()["data"] == []
    deployment.removed_at = timezone.now()
    deployment.save()
    assert post(key, BODY).status_code == 404


def test_unknown_api_paths_and_methods_answer_in_the_error_shape(key: str) -> None:
    client = Client()
    missing = client.post("/v1/chat/completions", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert missing.status_code == 404 and error_of(missing)["code"] == "unknown_url"
    wrong = client.get("/v1/completions", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert wrong.status_code == 405 and wrong["Allow"] == "POST"


def test_an_oversized_body_is_413(key: str, settings: Any) -> None:
    settings.GATEWAY_MAX_BODY_BYTES = 1000
    response = post(key, {**BODY, "prompt": "x" * 2000})
    assert response.status_code == 413 and error_of(response)["code"] == "body_too_large"

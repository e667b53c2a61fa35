"""The OpenAI-compatible API end to end: the official `openai` client against the portal served by
uvicorn (ASGI, the production path), in front of a REAL engine (`python -m inference_worker serve`)
on a small random OPT. PostgreSQL and Redis are the real servers of the test run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx2
import openai
import pytest
from django.utils import timezone

from access.models import ApiKey, Release
from access.services.api_keys import api_key_revoke
from access.services.audit import SYSTEM, RequestMeta
from access.services.grants import grant_revoke
from gateway.models import Deployment, GrantLimits, Replica, ReplicaStatus, UsageRecord, UsageStatus
from gateway.services.deployments import deployments_check_health
from tests import factories
from tests.artifacts.conftest import grant_access, make_checkpoint
from tests.gateway.conftest import add_deployment, api_key_for, closed_port_url, write_secret

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

MODEL = "opt-175b"
LONG = {"max_tokens": 1000, "extra_body": {"ignore_eos": True}}  # a stream that lasts seconds


@pytest.fixture
def deployment(engine: Any, portal: Any, gated_release: Any, tmp_path: Any, live_settings: Any) -> Deployment:
    checkpoint = make_checkpoint(gated_release, tmp_path)
    return add_deployment(gated_release, checkpoint, [engine.url], engine.secret_file)


@pytest.fixture
def grant(applicant: Any, gated_release: Any, reviewer: Any) -> Any:
    return grant_access(applicant, gated_release, reviewer)


def client_for(portal: Any, raw_key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{portal.url}/v1", api_key=raw_key, max_retries=0, timeout=60)


@pytest.fixture
def holder_client(portal: Any, applicant: Any, grant: Any, deployment: Any) -> openai.OpenAI:
    return client_for(portal, api_key_for(applicant)[1])


def wait_for(condition: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_plain_completion_passes_through_and_is_recorded(
    holder_client: openai.OpenAI, applicant: Any, deployment: Any
) -> None:
    completion = holder_client.completions.create(model=MODEL, prompt="hello world", max_tokens=6, temperature=0)
    assert completion.model == MODEL
    assert completion.choices[0].text and completion.choices[0].finish_reason in {"length", "stop"}
    assert completion.usage.completion_tokens == 6 and completion.usage.prompt_tokens > 0
    record = UsageRecord.objects.get(user=applicant)
    assert (record.status, record.http_status, record.stream, record.usage_exact) == ("ok", 200, False, True)
    assert (record.prompt_tokens, record.completion_tokens) == (completion.usage.prompt_tokens, 6)
    assert record.deployment_id == deployment.pk and record.replica.url == deployment.replicas.get().url
    assert record.api_key_id == ApiKey.objects.get(user=applicant).pk and record.latency_ms > 0


def test_stream_is_the_same_text_token_by_token_with_usage(holder_client: openai.OpenAI, applicant: Any) -> None:
    plain = holder_client.completions.create(model=MODEL, prompt="the quick brown", max_tokens=12, temperature=0)
    chunks = list(
        holder_client.completions.create(
            model=MODEL, prompt="the quick brown", max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    texts = [chunk.choices[0].text for chunk in chunks if chunk.choices]
    assert len(texts) == 12 and "".join(texts) == plain.choices[0].text  # one token per event, same greedy text
    assert all(chunk.model == MODEL for chunk in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    # Without include_usage the client gets no usage chunk, and the row is exact all the same.
    quiet = list(holder_client.completions.create(model=MODEL, prompt="the quick brown", max_tokens=3, stream=True))
    assert all(chunk.choices for chunk in quiet) and all(chunk.usage is None for chunk in quiet)
    rows = list(UsageRecord.objects.filter(user=applicant).order_by("pk"))
    assert [(r.stream, r.completion_tokens, r.usage_exact, r.status) for r in rows] == [
        (False, 12, True, "ok"), (True, 12, True, "ok"), (True, 3, True, "ok"),
    ]  # fmt: skip
    assert rows[1].first_token_ms is not None and rows[1].first_token_ms <= rows[1].latency_ms


def test_logprobs_echo_and_n(holder_client: openai.OpenAI) -> None:
    scored = holder_client.completions.create(model=MODEL, prompt="hello world", max_tokens=0, echo=True, logprobs=1)
    logprobs = scored.choices[0].logprobs
    assert scored.choices[0].text == "hello world" and len(logprobs.tokens) == scored.usage.prompt_tokens
    assert logprobs.token_logprobs[0] is None and all(lp < 0 for lp in logprobs.token_logprobs[1:])
    several = holder_client.completions.create(
        model=MODEL, prompt="once upon a time", max_tokens=4, n=3, temperature=1.0, seed=7, logprobs=2
    )
    assert sorted(choice.index for choice in several.choices) == [0, 1, 2]
    assert all(1 <= len(choice.logprobs.top_logprobs[0]) <= 3 for choice in several.choices)  # top 2 + the sampled one
    again = holder_client.completions.create(
        model=MODEL, prompt="once upon a time", max_tokens=4, n=3, temperature=1.0, seed=7, logprobs=2
    )
    assert [c.text for c in again.choices] == [c.text for c in several.choices]  # the seed reaches the engine


def test_the_engines_400_names_the_field(holder_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        holder_client.completions.create(model=MODEL, prompt="hi", max_tokens=4, temperature=7.0)
    assert refused.value.body["param"] == "temperature"


def test_models_lists_only_what_the_caller_may_use(portal: Any, holder_client: openai.OpenAI, deployment: Any) -> None:
    assert [model.id for model in holder_client.models.list()] == [MODEL]
    assert holder_client.models.retrieve(MODEL).id == MODEL
    outsider = factories.make_user("eve@example.org")
    assert list(client_for(portal, api_key_for(outsider)[1]).models.list()) == []


def test_refusals_map_to_the_clients_exceptions(
    portal: Any,
    holder_client: openai.OpenAI,
    applicant: Any,
    other_applicant: Any,
    reviewer: Any,
    deployment: Any,
    grant: Any,
) -> None:
    # A user without a grant.
    outsider = client_for(portal, api_key_for(factories.make_user("eve@example.org"))[1])
    with pytest.raises(openai.PermissionDeniedError) as no_grant:
        outsider.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert no_grant.value.body["code"] == "no_grant"
    # A bad key, a revoked key, an expired key.
    with pytest.raises(openai.AuthenticationError):
        client_for(portal, "orp_wrong").completions.create(model=MODEL, prompt="hi", max_tokens=2)
    revoked, raw = api_key_for(applicant)
    api_key_revoke(key=revoked, actor=applicant)
    with pytest.raises(openai.AuthenticationError):
        client_for(portal, raw).completions.create(model=MODEL, prompt="hi", max_tokens=2)
    expired, raw_expired = api_key_for(applicant, expires_at=timezone.now() + timedelta(minutes=1))
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(openai.AuthenticationError):
        client_for(portal, raw_expired).completions.create(model=MODEL, prompt="hi", max_tokens=2)
    # Unknown model.
    with pytest.raises(openai.NotFoundError):
        holder_client.completions.create(model="gpt-5", prompt="hi", max_tokens=2)
    # Another user's model: served, but only the other applicant holds a grant to it.
    llama = factories.make_release(slug="llama-7b", name="LLaMA-7B", gated=True)
    grant_access(other_applicant, llama, reviewer)
    other_deployment = Deployment.objects.create(
        release=llama, checkpoint=deployment.checkpoint, secret_file=deployment.secret_file
    )
    Replica.objects.create(deployment=other_deployment, url=deployment.replicas.get().url)
    with pytest.raises(openai.PermissionDeniedError):
        holder_client.completions.create(model="llama-7b", prompt="hi", max_tokens=2)
    assert (
        client_for(portal, api_key_for(other_applicant)[1])
        .completions.create(model="llama-7b", prompt="hi", max_tokens=2)
        .choices[0]
        .text
        is not None
    )
    # A revoked grant refuses the very next request.
    holder_client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    grant_revoke(grant=grant, actor=reviewer, reason="misuse", meta=RequestMeta())
    with pytest.raises(openai.PermissionDeniedError) as after_revoke:
        holder_client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert after_revoke.value.body["code"] == "grant_revoked"


def test_revoking_the_grant_stops_an_open_stream(
    holder_client: openai.OpenAI, applicant: Any, reviewer: Any, grant: Any
) -> None:
    stream = holder_client.completions.create(model=MODEL, prompt="hello", stream=True, **LONG)
    received = 0
    with pytest.raises(openai.APIError) as stopped:
        for chunk in stream:
            received += len(chunk.choices)
            if received == 3:
                grant_revoke(grant=grant, actor=reviewer, reason="misuse", meta=RequestMeta())
    assert "revoked" in stopped.value.message and received < 1000
    record = wait_for(lambda: UsageRecord.objects.filter(user=applicant).first())
    assert (record.status, record.error_code, record.usage_exact) == (UsageStatus.CUT, "grant_revoked", False)
    assert record.completion_tokens >= received and record.prompt_tokens > 0  # counted: /tokenize + chunks


def test_revoking_the_key_stops_an_open_stream(portal: Any, applicant: Any, grant: Any, deployment: Any) -> None:
    key, raw = api_key_for(applicant)
    stream = client_for(portal, raw).completions.create(model=MODEL, prompt="hello", stream=True, **LONG)
    with pytest.raises(openai.APIError) as stopped:
        for index, _chunk in enumerate(stream):
            if index == 2:
                api_key_revoke(key=key, actor=applicant)
    assert "revoked" in stopped.value.message


def test_requests_in_flight_do_not_hold_connections(
    portal: Any, applicant: Any, grant: Any, deployment: Any, live_settings: Any
) -> None:
    """The portal's pool has 2 connections (and fails a request after 3 s without one); four requests at
    once, each waiting seconds on the engine, must not hold them: all four succeed and leave their rows."""
    _, raw = api_key_for(applicant)
    body = {"model": MODEL, "prompt": "hello world", "max_tokens": 300, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {raw}"}

    def complete(_: int) -> httpx2.Response:
        return httpx2.post(f"{portal.url}/v1/completions", json=body, headers=headers, timeout=120)

    with ThreadPoolExecutor(max_workers=4) as pool:
        responses = list(pool.map(complete, range(4)))
    assert [r.status_code for r in responses] == [200] * 4, [r.text[:200] for r in responses]
    assert all(r.json()["usage"]["completion_tokens"] == 300 for r in responses)
    assert UsageRecord.objects.filter(user=applicant, status=UsageStatus.OK).count() == 4


def test_stream_is_not_buffered_and_a_dropped_client_is_recorded(
    portal: Any, applicant: Any, grant: Any, deployment: Any, live_settings: Any
) -> None:
    from gateway.counters import get_counters, scope_of

    GrantLimits.objects.create(grant=grant, max_concurrent=1)
    _, raw = api_key_for(applicant)
    body = {"model": MODEL, "prompt": "hello world", "stream": True, "max_tokens": 1000, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {raw}"}
    with httpx2.Client(timeout=30) as http:
        with http.stream("POST", f"{portal.url}/v1/completions", json=body, headers=headers) as response:
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert '"choices"' in first
            # The first token arrived while the request still runs: nothing was held back until the end.
            assert not UsageRecord.objects.filter(user=applicant).exists()
            scope = scope_of(user_id=applicant.pk, release_id=deployment.release_id)
            assert get_counters().in_flight(scope=scope, now=time.time()) == 1
            # At most one request at a time for this grant.
            second = http.post(
                f"{portal.url}/v1/completions", json={**body, "stream": False, "max_tokens": 2}, headers=headers
            )
            assert second.status_code == 429 and second.json()["error"]["code"] == "concurrent_requests"
            events = 1
            while events < 5:  # SSE events are separated by blank lines
                events += next(lines).startswith("data: ")
        # The client hung up mid-stream.
    record = wait_for(lambda: UsageRecord.objects.filter(user=applicant, status=UsageStatus.CLIENT_CLOSED).first())
    assert record.usage_exact is False and record.completion_tokens >= 5 and record.prompt_tokens > 0
    assert record.completion_tokens < 1000
    wait_for(lambda: get_counters().in_flight(scope=scope, now=time.time()) == 0)
    # The slot is free again.
    again = httpx2.post(
        f"{portal.url}/v1/completions", json={**body, "stream": False, "max_tokens": 2}, headers=headers, timeout=30
    )
    assert again.status_code == 200


def test_daily_token_quota_is_429_and_the_rows_add_up(holder_client: openai.OpenAI, applicant: Any, grant: Any) -> None:
    GrantLimits.objects.create(grant=grant, tokens_per_day=40)
    used = 0
    with pytest.raises(openai.RateLimitError) as limited:
        for _ in range(20):
            completion = holder_client.completions.create(model=MODEL, prompt="hello world", max_tokens=8)
            used += completion.usage.total_tokens
    assert limited.value.body["code"] == "tokens_per_day"
    assert limited.value.response.headers["retry-after"].isdigit()
    assert 40 <= used < 40 + 11  # admitted while under the limit; the last one may cross it
    rows = UsageRecord.objects.filter(user=applicant)
    assert sum(r.prompt_tokens + r.completion_tokens for r in rows.filter(status="ok")) == used
    assert rows.filter(status="refused", error_code="tokens_per_day").count() == 1


def test_a_dead_replica_is_skipped(
    portal: Any, engine: Any, applicant: Any, grant: Any, gated_release: Any, tmp_path: Any, live_settings: Any
) -> None:
    checkpoint = make_checkpoint(gated_release, tmp_path)
    dead = closed_port_url()
    add_deployment(gated_release, checkpoint, [dead, engine.url], engine.secret_file)
    client = client_for(portal, api_key_for(applicant)[1])
    # Ties go to a random replica: within a few requests one lands on the dead replica, is moved to the
    # live one, and the dead replica is marked failing; every request succeeds either way.
    for _ in range(30):
        assert client.completions.create(model=MODEL, prompt="hi", max_tokens=2).choices
        if Replica.objects.get(url=dead).status == ReplicaStatus.FAILING:
            break
    assert Replica.objects.get(url=dead).status == ReplicaStatus.FAILING
    assert set(UsageRecord.objects.filter(user=applicant).values_list("replica__url", flat=True)) == {engine.url}


def test_health_check_against_the_real_engine(engine: Any, gated_release: Any, tmp_path: Any) -> None:
    checkpoint = make_checkpoint(gated_release, tmp_path)
    deployment = add_deployment(gated_release, checkpoint, [engine.url], engine.secret_file)
    deployments_check_health()
    replica = deployment.replicas.get()
    deployment.refresh_from_db()
    assert replica.status == ReplicaStatus.HEALTHY and replica.healthy_at is not None and replica.last_error == ""
    assert deployment.engine_model == "tiny-opt" and deployment.max_context == 1024
    # The same engine with another secret file: the engine refuses it, and the page says why.
    from gateway.services.deployments import deployment_remove

    deployment_remove(deployment=deployment, actor=None, meta=SYSTEM)
    wrong = add_deployment(gated_release, checkpoint, [engine.url], write_secret(tmp_path, "wrong.secret"))
    deployments_check_health()
    replica = wrong.replicas.get()
    assert replica.status == ReplicaStatus.FAILING and "secret" in replica.last_error


def test_no_release_is_served_without_a_deployment(portal: Any, applicant: Any, grant: Any) -> None:
    assert Release.objects.filter(slug=MODEL).exists()
    with pytest.raises(openai.NotFoundError):
        client_for(portal, api_key_for(applicant)[1]).completions.create(model=MODEL, prompt="hi", max_tokens=2)


def test_a_client_that_gives_up_on_a_plain_request_is_recorded(
    portal: Any, applicant: Any, grant: Any, deployment: Any
) -> None:
    _, raw = api_key_for(applicant)
    body = {"model": MODEL, "prompt": "hello world", "max_tokens": 1000, "ignore_eos": True}
    with pytest.raises(httpx2.TimeoutException):
        httpx2.post(f"{portal.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {raw}"}, timeout=1.5)
    record = wait_for(lambda: UsageRecord.objects.filter(user=applicant).first())
    assert (record.status, record.http_status, record.usage_exact) == (UsageStatus.CLIENT_CLOSED, 499, False)
    assert record.prompt_tokens > 0 and record.latency_ms >= 1000


# --- A private checkpoint (a fine-tuning result) ----------------------------------------------


@pytest.fixture
def private_deployment(engine: Any, portal: Any, applicant: Any, gated_release: Any, tmp_path: Any,
                       live_settings: Any) -> Deployment:  # fmt: skip
    checkpoint = make_checkpoint(gated_release, tmp_path, variant="ft-7")
    type(checkpoint).objects.filter(pk=checkpoint.pk).update(owner=applicant)
    checkpoint.refresh_from_db()
    return add_deployment(gated_release, checkpoint, [engine.url], engine.secret_file)


PRIVATE = "opt-175b:ft-7"


def test_a_private_checkpoint_is_served_to_its_owner_only(
    portal: Any, applicant: Any, other_applicant: Any, reviewer: Any, grant: Any, private_deployment: Any
) -> None:
    owner = client_for(portal, api_key_for(applicant)[1])
    assert [model.id for model in owner.models.list()] == [PRIVATE]
    completion = owner.completions.create(model=PRIVATE, prompt="hello world", max_tokens=4, temperature=0)
    assert completion.model == PRIVATE and completion.usage.completion_tokens == 4
    record = UsageRecord.objects.get(user=applicant)
    assert (record.model, record.status, record.deployment_id) == (PRIVATE, "ok", private_deployment.pk)
    assert record.deployment.checkpoint.owner_id == applicant.pk
    # Another holder of the same release: the model does not exist for them, nor does the release's id
    # reach the private engine.
    grant_access(other_applicant, private_deployment.release, reviewer)
    other = client_for(portal, api_key_for(other_applicant)[1])
    assert list(other.models.list()) == []
    for model in (PRIVATE, MODEL):
        with pytest.raises(openai.NotFoundError):
            other.completions.create(model=model, prompt="hi", max_tokens=2)


def test_revoking_the_owners_grant_stops_a_private_stream(
    portal: Any, applicant: Any, reviewer: Any, grant: Any, private_deployment: Any
) -> None:
    stream = client_for(portal, api_key_for(applicant)[1]).completions.create(
        model=PRIVATE, prompt="hello", stream=True, **LONG
    )
    received = 0
    with pytest.raises(openai.APIError) as stopped:
        for chunk in stream:
            assert chunk.model == PRIVATE
            received += len(chunk.choices)
            if received == 3:
                grant_revoke(grant=grant, actor=reviewer, reason="misuse", meta=RequestMeta())
    assert "revoked" in stopped.value.message and received < 1000
    record = wait_for(lambda: UsageRecord.objects.filter(user=applicant).first())
    assert (record.model, record.status, record.error_code) == (PRIVATE, UsageStatus.CUT, "grant_revoked")

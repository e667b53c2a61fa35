"""Private checkpoints (fine-tuning results) behind the API, through Django's test client: served under
`<release-slug>:<variant>` to their owner only, while the owner may use the base release; 404 to anyone
else, exactly as a model that does not exist; never under the release's own id. The deployment's only
replica refuses connections, so an admitted request ends in 503 (the live run is in
test_private_live.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from access.services.audit import RequestMeta
from access.services.grants import grant_revoke
from gateway.models import Replica, ReplicaStatus, UsageRecord, UsageStatus
from gateway.selectors import access_recheck
from tests.artifacts.conftest import grant_access, make_checkpoint
from tests.gateway.conftest import add_deployment, api_key_for, closed_port_url

pytestmark = pytest.mark.django_db

PRIVATE = "opt-175b:ft-7"


def make_private_checkpoint(release: Any, tmp_path: Any, owner: Any, variant: str = "ft-7") -> Any:
    """A ready checkpoint of `release` private to `owner`, as a fine-tuning job leaves it."""
    checkpoint = make_checkpoint(release, tmp_path, variant=variant)
    type(checkpoint).objects.filter(pk=checkpoint.pk).update(owner=owner)
    checkpoint.refresh_from_db()
    return checkpoint


@pytest.fixture
def private_deployment(applicant: Any, gated_release: Any, tmp_path: Any, secret_file: Any) -> Any:
    checkpoint = make_private_checkpoint(gated_release, tmp_path, applicant)
    return add_deployment(gated_release, checkpoint, [closed_port_url()], secret_file)


@pytest.fixture
def other_holder(other_applicant: Any, gated_release: Any, reviewer: Any) -> Any:
    """Holds a grant to the same release, but does not own the fine-tuned checkpoint."""
    grant_access(other_applicant, gated_release, reviewer)
    return other_applicant


def post(raw_key: str, model: str) -> Any:
    return Client().post(
        "/v1/completions",
        data=json.dumps({"model": model, "prompt": "hello"}),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {raw_key}",
    )


def model_ids(raw_key: str) -> list[str]:
    return [entry["id"] for entry in Client().get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {raw_key}").json()["data"]]


def test_the_owner_is_served_under_the_private_id_and_the_row_names_it(
    applicant: Any, holder_grant: Any, private_deployment: Any
) -> None:
    assert private_deployment.model_id == PRIVATE and private_deployment.is_private
    response = post(api_key_for(applicant)[1], PRIVATE)
    assert response.status_code == 503 and response.json()["error"]["code"] == "no_engine"  # admitted
    record = UsageRecord.objects.get(user=applicant)
    assert (record.model, record.release_id, record.status) == (PRIVATE, private_deployment.release_id, "unavailable")


def test_another_holder_of_the_release_gets_404_as_for_an_unknown_model(
    applicant: Any, holder_grant: Any, other_holder: Any, private_deployment: Any
) -> None:
    _, other_key = api_key_for(other_holder)
    refused = post(other_key, PRIVATE)
    unknown = post(other_key, "opt-175b:ft-999")
    assert refused.status_code == unknown.status_code == 404
    assert refused.json()["error"]["code"] == "model_not_found"
    # Nothing in the answer tells an existing private model from a missing one.
    assert refused.json()["error"]["message"].replace(PRIVATE, "X") == unknown.json()["error"]["message"].replace(
        "opt-175b:ft-999", "X"
    )
    record = UsageRecord.objects.get(user=other_holder, model=PRIVATE)
    assert (record.status, record.http_status, record.release_id) == (UsageStatus.REFUSED, 404, None)
    assert PRIVATE not in model_ids(other_key)
    assert Client().get(f"/v1/models/{PRIVATE}", HTTP_AUTHORIZATION=f"Bearer {other_key}").status_code == 404


def test_a_private_deployment_never_serves_the_releases_own_id(
    applicant: Any, holder_grant: Any, other_holder: Any, private_deployment: Any, secret_file: Any, tmp_path: Any
) -> None:
    # Only the private checkpoint is deployed: the release's public model is not served at all.
    for user in (applicant, other_holder):
        assert post(api_key_for(user)[1], "opt-175b").status_code == 404
    assert model_ids(api_key_for(other_holder)[1]) == []
    assert model_ids(api_key_for(applicant)[1]) == [PRIVATE]
    # With a public deployment too, each id goes to its own deployment's replicas.
    public = add_deployment(
        private_deployment.release, make_checkpoint(private_deployment.release, tmp_path, variant="hf"),
        [closed_port_url()], secret_file,
    )  # fmt: skip
    assert model_ids(api_key_for(applicant)[1]) == ["opt-175b", PRIVATE]
    assert model_ids(api_key_for(other_holder)[1]) == ["opt-175b"]
    assert post(api_key_for(other_holder)[1], "opt-175b").status_code == 503
    public_row = UsageRecord.objects.filter(user=other_holder, model="opt-175b").latest("pk")
    assert public_row.status == UsageStatus.UNAVAILABLE
    # The public request tried the public replica only.
    assert Replica.objects.get(deployment=public).status == ReplicaStatus.FAILING
    assert Replica.objects.get(deployment=private_deployment).status == ReplicaStatus.UNKNOWN


def test_a_revoked_owner_gets_403_and_loses_the_listing(
    applicant: Any, reviewer: Any, holder_grant: Any, private_deployment: Any
) -> None:
    _, key = api_key_for(applicant)
    listed = Client().get(f"/v1/models/{PRIVATE}", HTTP_AUTHORIZATION=f"Bearer {key}").json()
    assert (listed["id"], listed["parent"], listed["owned_by"]) == (PRIVATE, "opt-175b", applicant.email)
    grant_revoke(grant=holder_grant, actor=reviewer, reason="misuse", meta=RequestMeta())
    refused = post(key, PRIVATE)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "grant_revoked"
    assert model_ids(key) == []
    record = UsageRecord.objects.get(user=applicant, model=PRIVATE)
    assert (record.error_code, record.release_id) == ("grant_revoked", private_deployment.release_id)


def test_the_owner_without_a_grant_is_refused_like_for_the_release(applicant: Any, private_deployment: Any) -> None:
    # A fine-tuning result is used under the base release's license: no grant, no use.
    refused = post(api_key_for(applicant)[1], PRIVATE)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "no_grant"


def test_a_private_model_shares_the_releases_daily_tokens(
    applicant: Any, holder_grant: Any, private_deployment: Any, settings: Any
) -> None:
    settings.GATEWAY_TOKENS_PER_DAY = 100
    UsageRecord.objects.create(
        created_at=timezone.now(), user=applicant, release=private_deployment.release, model="opt-175b",
        status="ok", http_status=200, prompt_tokens=60, completion_tokens=40,
    )  # fmt: skip
    limited = post(api_key_for(applicant)[1], PRIVATE)
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "tokens_per_day"


def test_the_recheck_of_a_running_request_covers_the_private_checkpoint(
    applicant: Any, other_holder: Any, reviewer: Any, holder_grant: Any, private_deployment: Any
) -> None:
    release_id, checkpoint_id = private_deployment.release_id, private_deployment.checkpoint_id
    assert (
        access_recheck(user_id=applicant.pk, api_key_id=None, release_id=release_id, checkpoint_id=checkpoint_id)
        is None
    )
    not_owner = access_recheck(
        user_id=other_holder.pk, api_key_id=None, release_id=release_id, checkpoint_id=checkpoint_id
    )
    assert not_owner is not None and not_owner.status == 403
    grant_revoke(grant=holder_grant, actor=reviewer, reason="misuse", meta=RequestMeta())
    revoked = access_recheck(user_id=applicant.pk, api_key_id=None, release_id=release_id, checkpoint_id=checkpoint_id)
    assert revoked is not None and revoked.code == "grant_revoked"


def test_the_playground_offers_the_owner_their_private_model(
    applicant: Any, holder_grant: Any, other_holder: Any, private_deployment: Any
) -> None:
    client = Client()
    client.force_login(applicant)
    page = client.get("/playground/", {"model": PRIVATE})
    assert page.status_code == 200 and page.context["selected"] == PRIVATE
    assert f'<option value="{PRIVATE}" selected>'.encode() in page.content
    assert PRIVATE.encode() in client.get("/usage/").content  # "Models you can call"
    client.force_login(other_holder)
    assert client.get("/playground/").status_code == 403  # nothing served they may use

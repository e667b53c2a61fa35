"""Pages and API endpoints: outsiders get 403/404 everywhere; operators see checkpoints, progress and
downloads per grant, re-verify and revoke; foreign ids in any parameter are refused."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse

from access.models import GrantStatus
from artifacts.models import DownloadEvent, VerificationStatus
from tests.artifacts.conftest import grant_access
from tests.conftest import login

pytestmark = pytest.mark.django_db

USER_PAGES = [
    "downloads-checkpoint",
    "downloads-renew",
    "downloads-sha256sums",
    "downloads-md5sums",
    "downloads-manifest",
    "downloads-script",
]
API = [
    "artifacts-api:checkpoint",
    "artifacts-api:bundle-manifest",
    "artifacts-api:bundle-sha256sums",
    "artifacts-api:bundle-md5sums",
    "artifacts-api:bundle-script",
]
OPERATOR_PAGES = ["checkpoint-detail", "checkpoint-progress"]


def test_outsider_gets_403_or_404_everywhere(
    client: Any, other_applicant: Any, gated_checkpoint: Any, holder_grant: Any
) -> None:
    pk = gated_checkpoint.pk
    # Anonymous: pages send to sign-in, the API answers 401/403.
    for name in USER_PAGES + ["downloads"]:
        response = client.get(reverse(name, args=[pk]) if name != "downloads" else reverse(name))
        assert response.status_code == 302 and "/accounts/login/" in response["Location"], name
    for name in API:
        assert client.get(reverse(name, args=[pk])).status_code in (401, 403), name
    assert client.post(reverse("artifacts-api:checkpoint-links", args=[pk])).status_code in (401, 403)
    # Signed in without a grant.
    login(client, other_applicant)
    for name in USER_PAGES:
        assert client.get(reverse(name, args=[pk])).status_code == 403, name
    assert client.post(reverse("downloads-renew", args=[pk])).status_code == 403
    for name in API:
        assert client.get(reverse(name, args=[pk])).status_code == 403, name
    assert client.post(reverse("artifacts-api:checkpoint-links", args=[pk])).status_code == 403
    assert client.get(reverse("artifacts-api:checkpoints")).json()["results"] == []
    assert gated_checkpoint.variant not in client.get(reverse("downloads")).content.decode()
    # Operator pages: not for applicants.
    for name in OPERATOR_PAGES:
        assert client.get(reverse(name, args=[pk])).status_code == 404, name
    assert client.post(reverse("checkpoint-verify", args=[pk])).status_code == 404
    assert client.get(reverse("checkpoint-index")).status_code == 403
    assert client.get(reverse("grant-downloads")).status_code == 403
    assert client.get(reverse("grant-downloads-detail", args=[holder_grant.pk])).status_code == 403
    assert client.post(reverse("grant-downloads-detail", args=[holder_grant.pk]), {"reason": "x"}).status_code == 403
    holder_grant.refresh_from_db()
    assert holder_grant.status == GrantStatus.ACTIVE


def test_unknown_and_foreign_ids(
    client: Any,
    applicant: Any,
    other_applicant: Any,
    gated_checkpoint: Any,
    holder_grant: Any,
    open_release: Any,
    tmp_path: Any,
    reviewer: Any,
) -> None:
    from tests.artifacts.conftest import make_checkpoint

    open_checkpoint = make_checkpoint(open_release, tmp_path)
    login(client, applicant)
    for name in USER_PAGES:
        assert client.get(reverse(name, args=[999999])).status_code == 404
        # A checkpoint of another release the holder has no access to (license not accepted).
        assert client.get(reverse(name, args=[open_checkpoint.pk])).status_code == 403
    for name in API:
        assert client.get(reverse(name, args=[999999])).status_code == 404
    assert client.get("/downloads/../checkpoints/").status_code in (403, 404)
    assert client.get("/d/..%2F..%2Fetc%2Fpasswd").status_code in (403, 404)
    assert client.get("/d/..").status_code == 403
    assert client.get("/d/%2Fetc%2Fpasswd").status_code in (403, 404)
    # Another user's grant on the operator page (not an operator).
    other_grant = grant_access(other_applicant, gated_checkpoint.release, reviewer)
    assert client.get(reverse("grant-downloads-detail", args=[other_grant.pk])).status_code == 403


def test_operator_pages(client: Any, reviewer: Any, applicant: Any, gated_checkpoint: Any, holder_grant: Any) -> None:
    login(client, applicant)
    manifest = client.post(reverse("artifacts-api:checkpoint-links", args=[gated_checkpoint.pk])).json()
    for item in manifest["files"]:
        response = client.get(item["url"].removeprefix("http://testserver"))
        b"".join(response.streaming_content)
    login(client, reviewer)
    index = client.get(reverse("checkpoint-index")).content.decode()
    assert gated_checkpoint.variant in index and "Ready" in index
    detail = client.get(reverse("checkpoint-detail", args=[gated_checkpoint.pk])).content.decode()
    for row in gated_checkpoint.files.all():
        assert row.sha256 in detail and row.md5 in detail
    assert "3 / 3 files" in detail
    progress = client.get(reverse("checkpoint-progress", args=[gated_checkpoint.pk])).json()
    assert progress["job"]["status"] == VerificationStatus.SUCCEEDED and progress["job"]["files_done"] == 3
    # Downloads per grant, then revoke from there.
    per_grant = client.get(reverse("grant-downloads")).content.decode()
    assert f"#{holder_grant.pk}" in per_grant and applicant.email in per_grant
    grant_page = client.get(reverse("grant-downloads-detail", args=[holder_grant.pk])).content.decode()
    assert "model.safetensors" in grant_page
    missing_reason = client.post(reverse("grant-downloads-detail", args=[holder_grant.pk]), {"reason": "  "})
    assert missing_reason.status_code == 400 and "Say why" in missing_reason.content.decode()
    response = client.post(reverse("grant-downloads-detail", args=[holder_grant.pk]), {"reason": "Shared the weights."})
    assert response.status_code == 302
    holder_grant.refresh_from_db()
    assert holder_grant.status == GrantStatus.REVOKED
    login(client, applicant)
    refused = client.get(manifest["files"][0]["url"].removeprefix("http://testserver"), HTTP_ACCEPT="application/json")
    assert refused.status_code == 403 and refused.json()["code"] == "grant_revoked"
    assert DownloadEvent.objects.count() == 3


def test_verify_again_button(
    client: Any, admin: Any, gated_checkpoint: Any, django_capture_on_commit_callbacks: Any
) -> None:
    login(client, admin)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("checkpoint-verify", args=[gated_checkpoint.pk]))
    assert response.status_code == 302
    jobs = list(gated_checkpoint.verification_jobs.order_by("pk"))
    assert len(jobs) == 2 and jobs[1].status == VerificationStatus.SUCCEEDED and jobs[1].requested_by == admin
    assert client.get(reverse("checkpoint-verify", args=[gated_checkpoint.pk])).status_code == 405


def test_schema_lists_the_download_api(client: Any, applicant: Any) -> None:
    login(client, applicant)
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    for path in (
        "/api/v1/checkpoints/",
        "/api/v1/checkpoints/{checkpoint_id}/links/",
        "/api/v1/checkpoints/{checkpoint_id}/bundle/download-sh/",
    ):
        assert path in schema["paths"]


def test_checkpoint_pages_list_the_true_size(client: Any, reviewer: Any, gated_release: Any, tmp_path: Any) -> None:
    """Files of the same size (the shards of a tensor-parallel checkpoint often are) each count."""
    from tests.artifacts.conftest import make_checkpoint

    blob = bytes(range(256)) * 4000  # 1,024,000 bytes
    files = {"config.json": b'{"model_type": "opt"}\n', "model.safetensors": blob, "tokenizer/tokenizer.json": blob}
    checkpoint = make_checkpoint(gated_release, tmp_path, files, variant="tp2")
    total = sum(len(data) for data in files.values())
    login(client, reviewer)
    index = client.get(reverse("checkpoint-index")).content.decode()
    assert "2.0\xa0MB" in index  # 2,048,003 bytes, not one shard's 1.0 MB
    detail = client.get(reverse("checkpoint-detail", args=[checkpoint.pk])).content.decode()
    assert f"({total} bytes) in 3 files" in detail
    assert "Never verified" not in detail

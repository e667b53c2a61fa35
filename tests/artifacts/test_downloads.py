"""Signed links end to end on both storage backends: the refusal matrix, ranges, resume, quota,
conditional requests, bundles checked with a real `sha256sum -c`, and X-Accel-Redirect."""

from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import requests
from django.urls import reverse
from django.utils import timezone

from access.models import AuditEvent
from access.services.audit import RequestMeta
from access.services.grants import grant_revoke
from artifacts.models import CheckpointState, DownloadEvent
from artifacts.signing import sign_link
from tests.artifacts.conftest import HF_FILES, accept_license, grant_access, make_checkpoint, use_s3
from tests.conftest import login

pytestmark = pytest.mark.django_db
BLOB = HF_FILES["model.safetensors"]


def links(client: Any, checkpoint: Any) -> dict[str, str]:
    response = client.post(reverse("artifacts-api:checkpoint-links", args=[checkpoint.pk]))
    assert response.status_code == 200, response.content
    return {item["path"]: item["url"] for item in response.json()["files"]}


def path_of(url: str) -> str:
    return urlparse(url).path


def fetch(client: Any, url: str, **headers: Any) -> tuple[Any, bytes]:
    """Redeem a link; follow an S3 redirect to the real (moto) server with the same Range."""
    response = client.get(path_of(url), **headers)
    if response.status_code == 302:
        upstream = {"Range": headers["HTTP_RANGE"]} if "HTTP_RANGE" in headers else {}
        followed = requests.get(response["Location"], headers=upstream, timeout=30)
        return response, followed.content if followed.status_code in (200, 206) else b"!" + followed.content
    if response.status_code in (200, 206):
        return response, b"".join(response.streaming_content) if response.streaming else response.content
    return response, b""


def drop(response: Any) -> None:
    """What a dropped connection does to a streamed response: the server closes the file.

    (Not response.close(): in a test that also fires request_finished, which closes the test's
    database connection.)"""
    for closer in response._resource_closers:
        closer()


@pytest.fixture
def holder(client: Any, applicant: Any, holder_grant: Any) -> Any:
    return login(client, applicant)


def test_full_download_on_both_backends(backend: str, holder: Any, gated_checkpoint: Any, holder_grant: Any) -> None:
    url = links(holder, gated_checkpoint)["model.safetensors"]
    response, body = fetch(holder, url)
    assert body == BLOB
    if backend == "s3":
        assert response.status_code == 302
        assert "X-Amz-Expires=60" in response["Location"]
    else:
        assert response.status_code == 200 and response["ETag"] == f'"{hashlib.sha256(BLOB).hexdigest()}"'
    event = DownloadEvent.objects.get()
    assert (event.grant, event.bytes_served, event.user.email) == (holder_grant, len(BLOB), "alice@uni-heidelberg.de")
    assert AuditEvent.objects.filter(action="download.serve", target_id=str(event.file_id)).exists()


@pytest.mark.parametrize(
    "header, start, end", [("bytes=10-19", 10, 19), ("bytes=100000-", 100000, None), ("bytes=-7", len(BLOB) - 7, None)]
)
def test_single_ranges(backend: str, holder: Any, gated_checkpoint: Any, header: str, start: int, end: Any) -> None:
    url = links(holder, gated_checkpoint)["model.safetensors"]
    response, body = fetch(holder, url, HTTP_RANGE=header)
    expected = BLOB[start : None if end is None else end + 1]
    assert body == expected
    if backend == "local":
        assert response.status_code == 206
        assert response["Content-Range"] == f"bytes {start}-{start + len(expected) - 1}/{len(BLOB)}"
    assert DownloadEvent.objects.get().bytes_served == len(expected)


# --- The refusal matrix -----------------------------------------------------------------------


def refused(client: Any, url: str, status: int, code: str, **headers: Any) -> dict[str, Any]:
    response = client.get(path_of(url), HTTP_ACCEPT="application/json", **headers)
    assert response.status_code == status, response.content
    body = response.json()
    assert body["code"] == code and body["detail"]
    html = client.get(path_of(url), **headers)
    assert html.status_code == status and "text/html" in html["Content-Type"]
    return body


def test_tampered_link_is_403(backend: str, holder: Any, gated_checkpoint: Any) -> None:
    url = links(holder, gated_checkpoint)["model.safetensors"]
    flipped = url[:-1] + ("0" if url[-1] != "0" else "1")
    refused(holder, flipped, 403, "link_invalid")
    file_id, rest = path_of(url).removeprefix("/d/").split(".", 1)
    refused(holder, f"/d/{int(file_id) + 1}.{rest}", 403, "link_invalid")  # another file, same MAC
    refused(holder, path_of(url)[:-10], 403, "link_invalid")
    assert not DownloadEvent.objects.exists()


def test_expired_link_is_410_with_renewal_url(
    backend: str, holder: Any, applicant: Any, gated_checkpoint: Any, holder_grant: Any
) -> None:
    row = gated_checkpoint.files.get(path="model.safetensors")
    token, _ = sign_link(
        file_id=row.pk, user_id=applicant.pk, grant_id=holder_grant.pk, now=timezone.now() - timedelta(hours=25)
    )
    body = refused(holder, f"/d/{token}", 410, "link_expired")
    assert body["renewal_url"].endswith(reverse("downloads-renew", args=[gated_checkpoint.pk]))
    html = holder.get(f"/d/{token}").content.decode()
    assert reverse("downloads-renew", args=[gated_checkpoint.pk]) in html
    # The renewal page: one POST, fresh links, no reviewer.
    renew = holder.post(reverse("downloads-renew", args=[gated_checkpoint.pk]))
    assert renew.status_code == 302
    fresh = links(holder, gated_checkpoint)["model.safetensors"]
    assert fetch(holder, fresh)[1] == BLOB


def test_revocation_applies_to_links_already_issued(
    backend: str, holder: Any, gated_checkpoint: Any, holder_grant: Any, reviewer: Any
) -> None:
    url = links(holder, gated_checkpoint)["model.safetensors"]
    grant_revoke(grant=holder_grant, actor=reviewer, reason="Terms breached.", meta=RequestMeta())
    refused(holder, url, 403, "grant_revoked")
    assert not DownloadEvent.objects.exists()


def test_link_bound_to_an_older_grant_fails(
    backend: str, holder: Any, applicant: Any, gated_checkpoint: Any, holder_grant: Any, reviewer: Any, settings: Any
) -> None:
    url = links(holder, gated_checkpoint)["model.safetensors"]
    grant_revoke(grant=holder_grant, actor=reviewer, reason="Re-issued.", meta=RequestMeta())
    settings.REAPPLY_COOLDOWN_DAYS = 0
    grant_access(applicant, gated_checkpoint.release, reviewer)  # a new active grant
    refused(holder, url, 403, "grant_changed")
    assert fetch(holder, links(holder, gated_checkpoint)["model.safetensors"])[1] == BLOB


def test_quota_counts_bytes_and_refuses_with_429(
    backend: str, holder: Any, gated_checkpoint: Any, settings: Any
) -> None:
    settings.ARTIFACTS_DOWNLOAD_QUOTA = 2
    url = links(holder, gated_checkpoint)["model.safetensors"]
    half = len(BLOB) // 2
    # Ranges count bytes, not requests: four half-file ranges are two complete downloads.
    for start in (0, half, 0, half):
        _, body = fetch(holder, url, HTTP_RANGE=f"bytes={start}-{start + half - 1}")
        assert body == BLOB[start : start + half]
    refused(holder, url, 429, "quota_exhausted")
    refused(holder, url, 429, "quota_exhausted", HTTP_RANGE="bytes=0-0")
    # Other files have their own quota.
    assert fetch(holder, links(holder, gated_checkpoint)["config.json"])[1] == HF_FILES["config.json"]


def test_bad_range_is_416(backend: str, holder: Any, gated_checkpoint: Any) -> None:
    url = links(holder, gated_checkpoint)["model.safetensors"]
    for header in (f"bytes={len(BLOB)}-", "bytes=-0", "bytes=9-3", "bytes=abc", "bytes=0-1,5-9"):
        response = holder.get(path_of(url), HTTP_RANGE=header, HTTP_ACCEPT="application/json")
        assert response.status_code == 416, header
        assert response["Content-Range"] == f"bytes */{len(BLOB)}"
        assert response.json()["code"] == "range_not_satisfiable"
    assert not DownloadEvent.objects.exists()


HUGE = "9" * 5000  # beyond int64, and beyond the 4300 digits int() accepts


@pytest.mark.parametrize(
    "header, status, start, end",
    [
        (f"bytes={HUGE}-", 416, None, None),
        (f"bytes=1-{HUGE}", 206, 1, len(BLOB) - 1),
        (f"bytes=-{HUGE}", 206, 0, len(BLOB) - 1),
        ("bytes=18446744073709551616-18446744073709551617", 416, None, None),
        (f"bytes=0{'0' * 4400}7-9", 206, 7, 9),  # leading zeros do not make a number huge
        ("bytes=" + ",".join(["0-1"] * 5000), 416, None, None),
        ("bytes=-0", 416, None, None),
        ("bytes=5-3", 416, None, None),
        ("bytes=", 416, None, None),
        ("bytes=٣-٥", 416, None, None),  # other scripts' digits are not positions
        ("bytes=" + "x" * 100_000, 416, None, None),
        ("x" * 100_000, 200, 0, len(BLOB) - 1),  # not a byte range at all: ignored (RFC 9110 §14.2)
        ("Bytes=0-9", 206, 0, 9),  # range units are case-insensitive
        ("BYTES = 10-19", 206, 10, 19),
    ],
    ids=lambda value: value[:40] if isinstance(value, str) else value,
)
def test_absurd_ranges_are_416_or_ignored_never_500(
    holder: Any, gated_checkpoint: Any, header: str, status: int, start: Any, end: Any
) -> None:
    url = links(holder, gated_checkpoint)["model.safetensors"]
    response = holder.get(path_of(url), HTTP_RANGE=header, HTTP_ACCEPT="application/json")
    assert response.status_code == status
    if status == 416:
        assert response["Content-Range"] == f"bytes */{len(BLOB)}"
        assert len(response.json()["detail"]) < 300  # the header is quoted cut short, not echoed whole
        assert not DownloadEvent.objects.exists()
        return
    assert b"".join(response.streaming_content) == BLOB[start : end + 1]
    if status == 206:
        assert response["Content-Range"] == f"bytes {start}-{end}/{len(BLOB)}"
    assert DownloadEvent.objects.get().bytes_served == end - start + 1


def test_quota_counts_what_a_request_will_serve(holder: Any, gated_checkpoint: Any, settings: Any) -> None:
    """Partial plus full downloads cannot exceed the quota: a request is refused when the bytes it
    asks for would go past it, not only once the quota is already spent."""
    settings.ARTIFACTS_DOWNLOAD_QUOTA = 2
    url = links(holder, gated_checkpoint)["model.safetensors"]
    half = len(BLOB) // 2
    for start in (0, half, 0):  # one and a half downloads
        _, body = fetch(holder, url, HTTP_RANGE=f"bytes={start}-{start + half - 1}")
        assert body == BLOB[start : start + half]
    body = refused(holder, url, 429, "quota_exhausted")  # a whole file would make two and a half
    assert f"{2 * len(BLOB) - 3 * half} bytes" in body["detail"]  # says what is left
    assert DownloadEvent.objects.count() == 3
    # What is left can still be fetched, a range at a time; then nothing more.
    assert fetch(holder, url, HTTP_RANGE=f"bytes={half}-")[1] == BLOB[half:]
    refused(holder, url, 429, "quota_exhausted", HTTP_RANGE="bytes=0-0")
    served = sum(DownloadEvent.objects.values_list("bytes_served", flat=True))
    assert served == 2 * len(BLOB)


def test_a_signed_link_has_one_spelling(holder: Any, gated_checkpoint: Any) -> None:
    url = links(holder, gated_checkpoint)["model.safetensors"]
    token = path_of(url).removeprefix("/d/")
    fields = token.split(".")
    arabic_indic = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
    variants = [
        *(".".join(fields[:i] + ["0" + fields[i]] + fields[i + 1 :]) for i in range(4)),  # leading zeros
        ".".join([fields[0].translate(arabic_indic)] + fields[1:]),  # the same numbers in other digits
        ".".join(fields[:4] + [fields[4].upper()]),
        token + "%0A",  # a trailing newline
        token + ".",
        token + ".0",
    ]
    for variant in variants:
        refused(holder, f"/d/{variant}", 403, "link_invalid")
    assert not DownloadEvent.objects.exists()
    assert fetch(holder, url)[1] == BLOB


def test_wrong_user(
    backend: str, client: Any, applicant: Any, other_applicant: Any, gated_checkpoint: Any, holder_grant: Any
) -> None:
    url = links(login(client, applicant), gated_checkpoint)["model.safetensors"]
    login(client, other_applicant)
    refused(client, url, 403, "wrong_user")
    # A link honestly signed for a user without a grant is refused too.
    row = gated_checkpoint.files.get(path="model.safetensors")
    token, _ = sign_link(file_id=row.pk, user_id=other_applicant.pk, grant_id=holder_grant.pk)
    refused(client, f"/d/{token}", 403, "no_grant")


def test_quarantined_and_retired_checkpoints_are_never_served(backend: str, holder: Any, gated_checkpoint: Any) -> None:
    url = links(holder, gated_checkpoint)["model.safetensors"]
    for state in (CheckpointState.QUARANTINED, CheckpointState.RETIRED, CheckpointState.VERIFYING):
        type(gated_checkpoint).objects.filter(pk=gated_checkpoint.pk).update(state=state)
        refused(holder, url, 403, "checkpoint_unavailable")
        assert holder.post(reverse("artifacts-api:checkpoint-links", args=[gated_checkpoint.pk])).status_code == 404
        assert holder.get(reverse("downloads-checkpoint", args=[gated_checkpoint.pk])).status_code == 404


# --- Open releases ----------------------------------------------------------------------------


def test_open_release_needs_the_license_accepted(
    client: Any, applicant: Any, open_release: Any, tmp_path: Path
) -> None:
    checkpoint = make_checkpoint(open_release, tmp_path)
    login(client, applicant)
    assert client.get(reverse("downloads-checkpoint", args=[checkpoint.pk])).status_code == 403
    accept_license(applicant, open_release)
    page = client.get(reverse("downloads-checkpoint", args=[checkpoint.pk]))
    assert page.status_code == 200
    url = links(client, checkpoint)["model.safetensors"]
    assert "/d/" in url and ".0." in path_of(url)  # grant id 0 for open releases
    assert fetch(client, url)[1] == BLOB
    assert DownloadEvent.objects.get().grant is None


# --- Resume, conditional requests, X-Accel ----------------------------------------------------


def test_interrupted_download_resumes_byte_identical(
    holder: Any, gated_checkpoint: Any, tmp_path: Path, settings: Any, monkeypatch: Any
) -> None:
    from artifacts import serving

    monkeypatch.setattr(serving._FileResponse, "block_size", 16384)
    settings.ARTIFACTS_DOWNLOAD_QUOTA = 1
    url = links(holder, gated_checkpoint)["model.safetensors"]
    response = holder.get(path_of(url))
    stream = iter(response.streaming_content)
    partial = next(stream) + next(stream)  # the connection drops after two blocks
    drop(response)
    target = tmp_path / "model.safetensors"
    target.write_bytes(partial)
    # Only the bytes sent count against the quota of one complete download.
    assert DownloadEvent.objects.get().bytes_served == len(partial) == 32768
    resumed = holder.get(path_of(url), HTTP_RANGE=f"bytes={len(partial)}-", HTTP_IF_RANGE=response["ETag"])
    assert resumed.status_code == 206
    assert resumed["Content-Range"] == f"bytes {len(partial)}-{len(BLOB) - 1}/{len(BLOB)}"
    with open(target, "ab") as out:
        out.write(b"".join(resumed.streaming_content))
    assert target.read_bytes() == BLOB
    # Interrupted + resumed = exactly one complete download: the quota of 1 is now spent.
    assert holder.get(path_of(url), HTTP_RANGE="bytes=0-0").status_code == 429


def test_interrupted_transfer_counts_only_bytes_sent(holder: Any, gated_checkpoint: Any) -> None:
    from artifacts.models import CheckpointFile

    big = CheckpointFile.objects.get(checkpoint=gated_checkpoint, path="model.safetensors")
    url = links(holder, gated_checkpoint)["model.safetensors"]
    response = holder.get(path_of(url))
    drop(response)  # nothing read
    assert DownloadEvent.objects.get().bytes_served == big.size  # sendfile-style: reserved, not observed
    response = holder.get(path_of(url), HTTP_RANGE="bytes=0-")
    next(iter(response.streaming_content))
    drop(response)
    assert DownloadEvent.objects.order_by("-pk").first().bytes_served == len(BLOB)  # 1 MiB blocks: all read


def test_conditional_requests(holder: Any, gated_checkpoint: Any) -> None:
    url = links(holder, gated_checkpoint)["model.safetensors"]
    etag = f'"{hashlib.sha256(BLOB).hexdigest()}"'
    not_modified = holder.get(path_of(url), HTTP_IF_NONE_MATCH=etag)
    assert not_modified.status_code == 304 and not_modified["ETag"] == etag
    # If-Range with another validator: the Range is ignored and the whole file comes back.
    stale = holder.get(path_of(url), HTTP_RANGE="bytes=0-9", HTTP_IF_RANGE='"something-else"')
    assert stale.status_code == 200 and b"".join(stale.streaming_content) == BLOB
    fresh = holder.get(path_of(url), HTTP_RANGE="bytes=0-9", HTTP_IF_RANGE=etag)
    assert fresh.status_code == 206 and b"".join(fresh.streaming_content) == BLOB[:10]
    head = holder.head(path_of(url))
    assert head.status_code == 200 and head["Content-Length"] == str(len(BLOB)) and head.content == b""


def test_x_accel_redirect_hands_the_transfer_to_nginx(holder: Any, gated_checkpoint: Any, settings: Any) -> None:
    settings.ARTIFACTS_X_ACCEL_PREFIX = "/_protected/"
    url = links(holder, gated_checkpoint)["model.safetensors"]
    response = holder.get(path_of(url), HTTP_RANGE="bytes=5-")
    assert response.status_code == 200 and response.content == b""
    assert response["X-Accel-Redirect"] == f"/_protected/{gated_checkpoint.storage_prefix}/model.safetensors"
    assert DownloadEvent.objects.get().via == "x-accel"


def test_nginx_and_s3_are_handed_no_more_than_was_counted(
    holder: Any, gated_release: Any, tmp_path: Path, settings: Any, moto_endpoint: str
) -> None:
    """nginx and S3 read the client's own headers: a HEAD must not hand out a GET URL, a range signed
    into an S3 URL is all that URL fetches, and a range they may widen (If-Range) counts as the file."""
    etag = f'"{hashlib.sha256(BLOB).hexdigest()}"'
    settings.ARTIFACTS_X_ACCEL_PREFIX = "/_protected/"
    checkpoint = make_checkpoint(gated_release, tmp_path, variant="local")
    url = links(holder, checkpoint)["model.safetensors"]
    holder.get(path_of(url), HTTP_RANGE="bytes=0-9", HTTP_IF_RANGE=etag)
    assert DownloadEvent.objects.get().bytes_served == len(BLOB)
    DownloadEvent.objects.all().delete()

    settings.ARTIFACTS_X_ACCEL_PREFIX = ""
    use_s3(settings, moto_endpoint)
    checkpoint = make_checkpoint(gated_release, tmp_path, variant="s3")
    url = links(holder, checkpoint)["model.safetensors"]
    head = holder.head(path_of(url))
    assert head.status_code == 200 and "Location" not in head and head["Content-Length"] == str(len(BLOB))
    ranged = holder.get(path_of(url), HTTP_RANGE="bytes=0-9")
    assert ranged.status_code == 302 and "X-Amz-SignedHeaders=host%3Brange" in ranged["Location"]
    assert fetch(holder, url, HTTP_RANGE="bytes=0-9")[1] == BLOB[:10]
    whole = holder.get(path_of(url), HTTP_RANGE="bytes=0-9", HTTP_IF_RANGE=etag)
    assert whole.status_code == 302 and "range" not in whole["Location"].lower()
    assert sorted(DownloadEvent.objects.values_list("bytes_served", flat=True)) == [0, 10, 10, len(BLOB)]


# --- Bundles ----------------------------------------------------------------------------------


def test_bundle_passes_sha256sum_check(backend: str, holder: Any, gated_checkpoint: Any, tmp_path: Path) -> None:
    manifest = holder.get(reverse("downloads-manifest", args=[gated_checkpoint.pk])).json()
    assert manifest["renewal_url"].endswith(reverse("downloads-renew", args=[gated_checkpoint.pk]))
    target = tmp_path / "download"
    for item in manifest["files"]:
        path = target / item["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(fetch(holder, item["url"])[1])
    sums = holder.get(reverse("downloads-sha256sums", args=[gated_checkpoint.pk]))
    (target / "SHA256SUMS").write_bytes(sums.content)
    md5 = holder.get(reverse("downloads-md5sums", args=[gated_checkpoint.pk]))
    (target / "MD5SUMS").write_bytes(md5.content)
    assert subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=target, capture_output=True).returncode == 0
    assert subprocess.run(["md5sum", "-c", "MD5SUMS"], cwd=target, capture_output=True).returncode == 0
    (target / "model.safetensors").write_bytes(BLOB[:-1] + b"X")
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=target, capture_output=True, text=True)
    assert check.returncode != 0 and "model.safetensors: FAILED" in check.stdout


def test_api_text_bundles(holder: Any, gated_checkpoint: Any) -> None:
    sums = holder.get(reverse("artifacts-api:bundle-sha256sums", args=[gated_checkpoint.pk]))
    assert sums.status_code == 200 and sums["Content-Type"].startswith("text/plain")
    assert f"{hashlib.sha256(BLOB).hexdigest()}  model.safetensors\n" in sums.content.decode()
    script = holder.get(reverse("artifacts-api:bundle-script", args=[gated_checkpoint.pk])).content.decode()
    assert script.startswith("#!/usr/bin/env bash") and "sha256sum -c SHA256SUMS" in script and "curl" in script
    listing = holder.get(reverse("artifacts-api:checkpoints")).json()
    assert [c["id"] for c in listing["results"]] == [gated_checkpoint.pk]
    detail = holder.get(reverse("artifacts-api:checkpoint", args=[gated_checkpoint.pk])).json()
    assert {f["path"] for f in detail["files"]} == set(HF_FILES)
    manifest = holder.get(reverse("artifacts-api:bundle-manifest", args=[gated_checkpoint.pk])).json()
    assert json.dumps(manifest) and len(manifest["files"]) == 3


def test_download_pages_show_links(holder: Any, gated_checkpoint: Any) -> None:
    page = holder.get(reverse("downloads-checkpoint", args=[gated_checkpoint.pk])).content.decode()
    assert "/d/" in page and "download.sh" in page and "SHA256SUMS" in page
    index = holder.get(reverse("downloads")).content.decode()
    assert reverse("downloads-checkpoint", args=[gated_checkpoint.pk]) in index

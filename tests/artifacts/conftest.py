"""Fixtures for the artifacts tests: both storage backends (local disk and S3 on a real moto server
started for the test session), checkpoints made through the import service, and users with access."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import factories

MOTO_KEY = "testing"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: Any) -> Iterator[str]:
    """A real S3 API server (moto in server mode) on 127.0.0.1 for the whole session."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint + "/moto-api/", timeout=1)
            break
        except Exception:  # noqa: BLE001 - not up yet
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"moto server did not start; see {log}:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
    yield endpoint
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=MOTO_KEY, aws_secret_access_key=MOTO_KEY, region_name="us-east-1"
    )


def use_s3(settings: Any, endpoint: str, bucket: str | None = None) -> str:
    bucket = bucket or f"or-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=bucket)
    settings.ARTIFACTS_STORAGE = "s3"
    settings.S3_ENDPOINT_URL = endpoint
    settings.S3_BUCKET = bucket
    settings.AWS_ACCESS_KEY_ID = MOTO_KEY
    settings.AWS_SECRET_ACCESS_KEY = MOTO_KEY
    settings.AWS_REGION = "us-east-1"
    return bucket


@pytest.fixture(autouse=True)
def _local_storage(settings: Any, tmp_path: Path) -> None:
    settings.ARTIFACTS_STORAGE = "local"
    settings.ARTIFACTS_LOCAL_ROOT = tmp_path / "storage"
    settings.ARTIFACTS_X_ACCEL_PREFIX = ""
    settings.ARTIFACTS_IMPORT_ROOTS = []
    settings.ARTIFACTS_DOWNLOAD_QUOTA = 5


@pytest.fixture(params=["local", "s3"])
def backend(request: Any, settings: Any) -> str:
    """Run the test on both storage backends."""
    if request.param == "s3":
        use_s3(settings, request.getfixturevalue("moto_endpoint"))
    return str(request.param)


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


HF_FILES = {
    "config.json": b'{"model_type": "opt", "torch_dtype": "float32"}\n',
    "model.safetensors": bytes(range(256)) * 400 + b"tail",
    "tokenizer/vocab.json": b'{"a": 1}\n',
}


def make_checkpoint(
    release: Any,
    tmp_path: Path,
    files: dict[str, bytes] | None = None,
    *,
    variant: str = "hf",
    checksums: str | None = None,
) -> Any:
    """Import through the service and verify in-process; returns the checkpoint (refreshed)."""
    from artifacts.services import imports, verification

    source = write_tree(tmp_path / f"src-{release.slug}-{variant}", files or HF_FILES)
    result = imports.checkpoint_import(
        release=release, source_uri=str(source), variant=variant, checksums_text=checksums, enqueue=False
    )
    job = verification.verification_enqueue(checkpoint=result.checkpoint, dispatch=False)
    verification.verification_run(job_id=job.pk, workers=2)
    result.checkpoint.refresh_from_db()
    return result.checkpoint


def accept_license(user: Any, release: Any) -> None:
    from access.services.audit import RequestMeta
    from access.services.licenses import license_accept

    license_accept(
        user=user,
        release=release,
        license_version_id=release.license.current_version.pk,
        meta=RequestMeta(ip="127.0.0.1", user_agent="pytest"),
    )


def grant_access(user: Any, release: Any, reviewer: Any) -> Any:
    from access.services.audit import RequestMeta
    from access.services.reviews import application_approve

    application = factories.make_application(user, release)
    return application_approve(application=application, reviewer=reviewer, meta=RequestMeta(ip="127.0.0.1"))


@pytest.fixture
def gated_checkpoint(gated_release: Any, tmp_path: Path) -> Any:
    return make_checkpoint(gated_release, tmp_path)


@pytest.fixture
def holder_grant(applicant: Any, gated_release: Any, reviewer: Any) -> Any:
    return grant_access(applicant, gated_release, reviewer)

"""download.sh runs for real (bash + curl) against the live test server: parallel, resuming,
checksum-verifying, and pointing at the renewal page when its links expire."""

from __future__ import annotations

import shutil
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils import timezone

from access.services.audit import SYSTEM
from artifacts.services import links
from tests import factories
from tests.artifacts.conftest import HF_FILES, grant_access, make_checkpoint

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not (shutil.which("bash") and shutil.which("curl")), reason="needs bash and curl"),
]


def script_for(live_server: Any, user: Any, checkpoint: Any, *, now: Any = None) -> str:
    bundle = links.links_issue(
        user=user,
        checkpoint=checkpoint,
        base_url=live_server.url,
        link_url=lambda token: reverse("download-file", args=[token]),
        renewal_url=reverse("downloads-renew", args=[checkpoint.pk]),
        meta=SYSTEM,
        now=now,
    )
    return bundle.download_script()


@pytest.fixture
def setup(live_server: Any, tmp_path: Path) -> tuple[Any, Any]:
    user = factories.make_user("carol@uni.example", full_name="Carol")
    reviewer = factories.make_reviewer("rita@release.example")
    release = factories.make_release(slug="opt-175b", name="OPT-175B", gated=True)
    grant_access(user, release, reviewer)
    return user, make_checkpoint(release, tmp_path)


def run(script: str, target: Path) -> subprocess.CompletedProcess[str]:
    path = target.parent / "download.sh"
    path.write_text(script)
    return subprocess.run(
        ["bash", str(path), str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PARALLEL": "3"},
    )


def test_download_script_fetches_resumes_and_verifies(live_server: Any, setup: Any, tmp_path: Path) -> None:
    user, checkpoint = setup
    target = tmp_path / "out"
    target.mkdir()
    # A partial file from an earlier, interrupted run: the script resumes it with a Range request.
    (target / "model.safetensors").write_bytes(HF_FILES["model.safetensors"][:5000])
    result = run(script_for(live_server, user, checkpoint), target)
    assert result.returncode == 0, result.stderr
    assert "All files downloaded and verified" in result.stdout
    for name, data in HF_FILES.items():
        assert (target / name).read_bytes() == data
    assert "model.safetensors: OK" in result.stdout
    # Progress: what is coming, then a line per file as it starts and ends, numbered and sized.
    assert "Downloading 3 files (100.1KB) into" in result.stdout
    paths = sorted(HF_FILES)
    for number, name in enumerate(paths, start=1):
        label = f"[{number}/3] {name} ({filesizeformat(len(HF_FILES[name])).replace(chr(160), '')})"
        assert f"{label}: done" in result.stdout
    weights = paths.index("model.safetensors") + 1
    assert f"[{weights}/3] model.safetensors (100.0KB): resuming at byte 5000" in result.stdout
    resumed = checkpoint.files.get(path="model.safetensors").download_events.get()
    assert (resumed.range_start, resumed.status_code) == (5000, 206)


def test_download_script_catches_a_corrupt_partial_file(live_server: Any, setup: Any, tmp_path: Path) -> None:
    user, checkpoint = setup
    target = tmp_path / "out"
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"\0" * 5000)  # wrong bytes: the resume cannot fix them
    result = run(script_for(live_server, user, checkpoint), target)
    assert result.returncode == 12 and "model.safetensors: FAILED" in result.stdout


def test_download_script_reports_the_renewal_url_on_expiry(live_server: Any, setup: Any, tmp_path: Path) -> None:
    user, checkpoint = setup
    target = tmp_path / "out"
    target.mkdir()
    script = script_for(live_server, user, checkpoint, now=timezone.now() - timedelta(hours=25))
    result = run(script, target)
    assert result.returncode == 10
    renewal = f"{live_server.url}{reverse('downloads-renew', args=[checkpoint.pk])}"
    assert renewal in result.stderr and "expired" in result.stderr
    assert urlparse(renewal).path.startswith("/downloads/")
    assert not (target / "model.safetensors").exists()

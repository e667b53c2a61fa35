"""`make demo` end to end: serves on the given port with DEBUG off, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's bookkeeping is left


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DEBUG"}}
    env.update(PORT=str(port), PORTAL_VAR_DIR=str(tmp_path))
    log = (tmp_path / "demo-output.txt").open("w")
    process = subprocess.Popen(
        ["scripts/demo.sh"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        # Started: the portal answers and the script has printed its last line (after the engine registered).
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if (
                    _get(f"{base}/healthz")[0] == 200
                    and "Stop with Ctrl-C." in (tmp_path / "demo-output.txt").read_text()
                ):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("the demo did not start:\n" + (tmp_path / "demo-output.txt").read_text())
        yield process, base, tmp_path
    finally:
        for pid in _descendants(process.pid) | {process.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(timeout=10)
        log.close()


def test_demo_serves_with_debug_off_and_stops_cleanly_on_ctrl_c(
    demo: tuple[subprocess.Popen[str], str, Path],
) -> None:
    process, base, var_dir = demo

    # DEBUG off: the portal's own 404 page, not Django's technical one; static files via whitenoise.
    status, body = _get(f"{base}/no-such-page/")
    assert status == 404 and b"There is nothing here" in body
    assert _get(f"{base}/static/portal/site.css")[0] == 200
    assert _get(f"{base}/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")[0] == 200

    # Seeding queues emails; they become files in the directory the output names.
    output = (var_dir / "demo-output.txt").read_text()
    mail_dir = var_dir / "mail"
    assert f"Emails: one file per email in {mail_dir}/" in output
    assert "The engine did not register" not in output
    # The worker sends them once it has started: wait for the first file.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(mail_dir.iterdir()):
        time.sleep(0.5)
    assert any(mail_dir.iterdir()), "no email file; see worker.log under " + str(var_dir / "log")

    children = _descendants(process.pid)
    assert len(children) >= 4  # uvicorn, the engine, the Celery worker and its pool
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.2)
    assert not [pid for pid in children if _alive(pid)], "processes left running after Ctrl-C"
    assert "Stopped." in (var_dir / "demo-output.txt").read_text()

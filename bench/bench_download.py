"""Download speed of a signed link: gunicorn alone, and nginx with X-Accel-Redirect, against nginx
serving the same file directly.

    .venv/bin/python bench/bench_download.py [--size-gib 2] [--runs 3]

Everything lives under var/bench (database var/bench/downloads.sqlite3, storage var/bench/storage,
nginx prefix var/bench/nginx). The 2 GiB file is random bytes, written once and reused. Each path
is downloaded with `curl -o /dev/null` `--runs` times after one warm-up; the best run counts.
Target: X-Accel-Redirect >= 0.8x nginx direct.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "var" / "bench"
STORAGE = BENCH / "storage"
DB = BENCH / "downloads.sqlite3"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
TARGET_RATIO = 0.8

ENV = {
    "DATABASE_URL": f"sqlite:///{DB}",
    "ARTIFACTS_STORAGE": "local",
    "ARTIFACTS_LOCAL_ROOT": str(STORAGE),
    "ARTIFACTS_DOWNLOAD_QUOTA": "100000",
    "DEBUG": "0",
    "LOG_LEVEL": "WARNING",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing answered on 127.0.0.1:{port}")


def make_file(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"writing {size / 2**30:.1f} GiB of random bytes to {path} …", flush=True)
    chunk = os.urandom(64 * 2**20)  # random, written repeatedly: incompressible, cheap to make
    with open(path, "wb") as out:
        out.writelines(chunk[: min(len(chunk), size - offset)] for offset in range(0, size, len(chunk)))


def setup_django() -> None:
    os.environ.update(ENV)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def issue_links(size: int) -> tuple[str, str]:
    """Register the big file as a verified checkpoint of a gated release; return (token, storage key)."""
    from django.urls import reverse

    from access.models import Grant, Release, User
    from access.services.audit import SYSTEM
    from access.services.reviews import application_approve
    from artifacts.models import CheckpointState
    from artifacts.services import imports, links, verification
    from tests import factories

    user = User.objects.filter(email="bench@example.org").first() or factories.make_user("bench@example.org")
    release = Release.objects.filter(slug="bench-gated").first() or factories.make_release(
        slug="bench-gated", name="Bench-2G", gated=True
    )
    if not Grant.objects.filter(user=user, release=release, status="active").exists():
        reviewer = User.objects.filter(email="bench-reviewer@example.org").first() or factories.make_reviewer(
            "bench-reviewer@example.org"
        )
        application = factories.make_application(user, release)
        application_approve(application=application, reviewer=reviewer, meta=SYSTEM)
    # The stored object and the import source are hard links of one file: the import finds the
    # object already in storage (same size) and copies nothing.
    key = "checkpoints/bench-gated/bench/big.bin"
    stored = STORAGE / key
    make_file(stored, size)
    source = BENCH / "source-2g"
    source.mkdir(parents=True, exist_ok=True)
    if not (source / "big.bin").exists():
        os.link(stored, source / "big.bin")
    result = imports.checkpoint_import(
        release=release, source_uri=str(source), fmt="native", variant="bench", enqueue=False
    )
    checkpoint = result.checkpoint
    if checkpoint.state != CheckpointState.READY:
        job = verification.verification_enqueue(checkpoint=checkpoint, dispatch=False)
        verification.verification_run(job_id=job.pk)
        checkpoint.refresh_from_db()
    assert checkpoint.state == CheckpointState.READY, checkpoint.state_reason
    bundle = links.links_issue(
        user=user,
        checkpoint=checkpoint,
        base_url="",
        meta=SYSTEM,
        link_url=lambda token: reverse("download-file", args=[token]),
        renewal_url="/",
        record=False,
    )
    return bundle.links[0].url, key


def curl(url: str) -> tuple[float, str]:
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download} %{http_code} %{size_download}", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return float(out[0]) / 1e6, f"{out[1]} ({int(out[2]) / 2**30:.2f} GiB)"


def best(url: str, runs: int, expect: int) -> float:
    curl(url)  # warm-up: page cache, connections, Python imports
    speeds = []
    for _ in range(runs):
        speed, status = curl(url)
        if not status.startswith(("200", "206")) or f"{expect / 2**30:.2f} GiB" not in status:
            raise SystemExit(f"{url}: {status}")
        speeds.append(speed)
    return max(speeds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    size = int(args.size_gib * 2**30)
    BENCH.mkdir(parents=True, exist_ok=True)
    setup_django()
    link_path, key = issue_links(size)

    env = {**os.environ, **ENV}
    processes: list[subprocess.Popen[bytes]] = []
    plain_port, accel_port, nginx_port = free_port(), free_port(), free_port()
    gunicorn = [
        str(ROOT / ".venv" / "bin" / "gunicorn"),
        "portal.wsgi",
        "-w",
        str(args.workers),
        "--log-level",
        "warning",
    ]
    prefix = BENCH / "nginx"
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    sendfile on;
    tcp_nopush on;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{nginx_port};
        location /direct/ {{ alias {STORAGE}/; }}
        location /_protected/ {{ internal; alias {STORAGE}/; output_buffers 2 1m; }}
        location / {{
            proxy_pass http://127.0.0.1:{accel_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
""")
    try:
        processes.append(subprocess.Popen([*gunicorn, "-b", f"127.0.0.1:{plain_port}"], cwd=ROOT, env=env))
        processes.append(
            subprocess.Popen(
                [*gunicorn, "-b", f"127.0.0.1:{accel_port}"],
                cwd=ROOT,
                env={**env, "ARTIFACTS_X_ACCEL_PREFIX": "/_protected/"},
            )
        )
        processes.append(
            subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf)], cwd=prefix, stderr=subprocess.DEVNULL)
        )
        for port in (plain_port, accel_port, nginx_port):
            wait_port(port)
        direct = best(f"http://127.0.0.1:{nginx_port}/direct/{key}", args.runs, size)
        plain = best(f"http://127.0.0.1:{plain_port}{link_path}", args.runs, size)
        accel = best(f"http://127.0.0.1:{nginx_port}{link_path}", args.runs, size)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
    print(f"file: {size / 2**30:.1f} GiB, best of {args.runs} runs, curl -o /dev/null on 127.0.0.1")
    print(f"  nginx direct (static file)          {direct:8.0f} MB/s   1.00x")
    print(f"  signed link, gunicorn (sendfile)    {plain:8.0f} MB/s   {plain / direct:.2f}x")
    print(
        f"  signed link, nginx X-Accel-Redirect {accel:8.0f} MB/s   {accel / direct:.2f}x  (target >= {TARGET_RATIO}x)"
    )
    return 0 if accel / direct >= TARGET_RATIO else 1


if __name__ == "__main__":
    raise SystemExit(main())

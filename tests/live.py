"""Other processes on this test run's database: its URL for them, the portal under uvicorn, and the
wait for their PostgreSQL sessions to end (pytest cannot drop a database that still has one)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from tests.inference_worker._server import ServerProcess


def database_url_of_test_db(*, application_name: str = "") -> str:
    """The test database as a DATABASE_URL; on PostgreSQL its sessions carry `application_name`, so they
    can be told apart from the others (and waited for)."""
    settings_dict = connection.settings_dict
    if connection.vendor == "postgresql":
        user = settings_dict.get("USER") or "postgres"
        password = f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else ""
        host = settings_dict.get("HOST") or "127.0.0.1"
        port = settings_dict.get("PORT") or 5432
        query = f"?application_name={application_name}" if application_name else ""
        return f"postgresql://{user}{password}@{host}:{port}/{settings_dict['NAME']}{query}"
    assert connection.vendor == "sqlite"
    name = str(settings_dict["NAME"])
    if name == ":memory:" or "mode=memory" in name:
        pytest.skip("the test database is in memory; a second process cannot share it")
    return f"sqlite:///{Path(name).resolve()}"


def sessions_of(application_name: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            [application_name],
        )
        (count,) = cursor.fetchone()
    return int(count)


def wait_for_sessions_to_end(application_name: str, *, seconds: float = 30) -> None:
    """A stopped process's PostgreSQL sessions end a moment after it exits."""
    if connection.vendor != "postgresql":
        return
    deadline = time.monotonic() + seconds
    while (left := sessions_of(application_name)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"{left} sessions of {application_name} still open {seconds}s after the process stopped"


def start_portal(env: dict[str, str], *, port: int, log: Path) -> ServerProcess:
    """`uvicorn portal.asgi:application` on 127.0.0.1:`port`, ready."""
    command = [
        sys.executable, "-m", "uvicorn", "portal.asgi:application", "--host", "127.0.0.1", "--port", str(port),
        "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    return ServerProcess(command, env=env, port=port, log=log, health="/healthz").wait_ready()

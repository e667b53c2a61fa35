"""Job settings come from the environment (portal/env.py), the Redis visibility timeout outlasts every
task's hard limit, and every Celery route names a task module that exists."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import django, json; django.setup(); from django.conf import settings as s; print(json.dumps({"
    "'work_dir': str(s.ARTIFACTS_RESHARD_WORK_DIR), 'stale': s.ARTIFACTS_RESHARD_STALE_SECONDS,"
    "'attempts': s.ARTIFACTS_RESHARD_MAX_ATTEMPTS, 'heartbeat': s.ARTIFACTS_RESHARD_HEARTBEAT_SECONDS,"
    "'numerics': s.ARTIFACTS_RESHARD_NUMERICS_MAX_BYTES, 'soft': s.ARTIFACTS_RESHARD_SOFT_TIME_LIMIT,"
    "'hard_limits': [s.CELERY_TASK_TIME_LIMIT, s.ARTIFACTS_VERIFY_TIME_LIMIT, s.ARTIFACTS_RESHARD_TIME_LIMIT],"
    "'visibility': s.CELERY_BROKER_TRANSPORT_OPTIONS.get('visibility_timeout'),"
    "'routes': list(s.CELERY_TASK_ROUTES), 'beat': [e['task'] for e in s.CELERY_BEAT_SCHEDULE.values()]}))"
)


def load(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "PORTAL_ENV"}}
    base.update(PORTAL_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="portal.settings", **env)
    return subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120
    )


def test_every_reshard_setting_comes_from_the_environment(tmp_path: Path) -> None:
    result = load(
        tmp_path,
        ARTIFACTS_RESHARD_WORK_DIR=str(tmp_path / "work"),
        ARTIFACTS_RESHARD_STALE_SECONDS="1200",
        ARTIFACTS_RESHARD_MAX_ATTEMPTS="7",
        ARTIFACTS_RESHARD_HEARTBEAT_SECONDS="20",
        ARTIFACTS_RESHARD_NUMERICS_MAX_BYTES="1024",
        ARTIFACTS_RESHARD_SOFT_TIME_LIMIT="3600",
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    assert values["work_dir"] == str(tmp_path / "work")
    assert (values["stale"], values["attempts"], values["heartbeat"]) == (1200, 7, 20)
    assert (values["numerics"], values["soft"]) == (1024, 3600)


def test_a_heartbeat_too_slow_for_its_stale_limit_is_refused(tmp_path: Path) -> None:
    result = load(tmp_path, ARTIFACTS_RESHARD_HEARTBEAT_SECONDS="600", ARTIFACTS_RESHARD_STALE_SECONDS="900")
    assert result.returncode != 0
    assert (
        "ARTIFACTS_RESHARD_STALE_SECONDS=900" in result.stderr
        and "ARTIFACTS_RESHARD_HEARTBEAT_SECONDS" in result.stderr
    )


def test_redis_visibility_timeout_outlasts_the_longest_task(tmp_path: Path) -> None:
    """Otherwise Redis hands a 12 h reshard to a second worker while the first still runs it."""
    for soft_limit in ("43200", "172800"):  # the default 12 h, and two days
        result = load(tmp_path, REDIS_URL="redis://127.0.0.1:6/0", ARTIFACTS_RESHARD_SOFT_TIME_LIMIT=soft_limit)
        assert result.returncode == 0, result.stderr
        values = json.loads(result.stdout)
        assert values["hard_limits"][2] > int(soft_limit)
        assert values["visibility"] > max(values["hard_limits"]) + 900  # + the longest retry countdown


def test_routes_and_beat_name_task_modules_that_exist(tmp_path: Path) -> None:
    result = load(tmp_path)
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout)
    for pattern in values["routes"] + values["beat"]:
        module = pattern.rsplit(".", 1)[0]
        assert importlib.util.find_spec(module) is not None, f"{pattern} routes to a module that does not exist"
    assert "jobs.tasks.reap_jobs" in values["beat"]

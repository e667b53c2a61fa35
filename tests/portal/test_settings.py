"""Settings come from the environment; production mode refuses unsafe values, naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GOOD_SECRET = "Kq7#vN2$wL9@xR4!tZ6&yB1*uM8^pD3%sF5+hJ0=gC-eA_oI.Xw"


def _load_settings(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "PORTAL_ENV"}
    }
    base.update(PORTAL_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="portal.settings", **env)
    code = "import django; django.setup(); from django.conf import settings; print(settings.DATABASES['default']['ENGINE'], settings.CELERY_BROKER_URL, settings.DEBUG)"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"DEBUG": "1", "SECRET_KEY": GOOD_SECRET, "ALLOWED_HOSTS": "models.example.org"}, "DEBUG"),
        ({"DEBUG": "0", "ALLOWED_HOSTS": "models.example.org"}, "SECRET_KEY"),
        ({"DEBUG": "0", "SECRET_KEY": "x" * 60, "ALLOWED_HOSTS": "models.example.org"}, "SECRET_KEY"),
        ({"DEBUG": "0", "SECRET_KEY": GOOD_SECRET}, "ALLOWED_HOSTS"),
    ],
)
def test_production_refuses_unsafe_settings(tmp_path: Path, env: dict[str, str], variable: str) -> None:
    result = _load_settings(tmp_path, PORTAL_ENV="production", **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and variable in result.stderr


def test_production_starts_with_safe_settings(tmp_path: Path) -> None:
    result = _load_settings(
        tmp_path, PORTAL_ENV="production", DEBUG="0", SECRET_KEY=GOOD_SECRET, ALLOWED_HOSTS="models.example.org"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[2] == "False"


def test_embedded_defaults_need_no_server(tmp_path: Path) -> None:
    result = _load_settings(tmp_path)
    assert result.returncode == 0, result.stderr
    engine, broker, debug = result.stdout.split()
    assert engine == "django.db.backends.sqlite3" and broker == "filesystem://" and debug == "True"


def test_services_switch_on_environment(tmp_path: Path) -> None:
    result = _load_settings(tmp_path, DATABASE_URL="postgresql://u@127.0.0.1:5/db", REDIS_URL="redis://127.0.0.1:6/0")
    assert result.returncode == 0, result.stderr
    engine, broker, _ = result.stdout.split()
    assert engine == "django.db.backends.postgresql" and broker == "redis://127.0.0.1:6/0"


def test_bad_values_name_the_variable(tmp_path: Path) -> None:
    result = _load_settings(tmp_path, DEBUG="maybe")
    assert result.returncode != 0 and "DEBUG='maybe'" in result.stderr
    result = _load_settings(tmp_path, DATABASE_URL="mysql://x/y")
    assert result.returncode != 0 and "DATABASE_URL" in result.stderr


PRODUCTION_ENV = {
    "PORTAL_ENV": "production",
    "DEBUG": "0",
    "SECRET_KEY": GOOD_SECRET,
    "ALLOWED_HOSTS": "models.example.org",
}


def _run(tmp_path: Path, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "DEBUG", "PORTAL_ENV"}}
    base.update(PORTAL_VAR_DIR=str(tmp_path), DJANGO_SETTINGS_MODULE="portal.settings", **env)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=base, capture_output=True, text=True, timeout=120)


def test_deploy_check_is_clean_in_production(tmp_path: Path) -> None:
    result = _run(tmp_path, ["manage.py", "check", "--deploy", "--fail-level", "WARNING"], **PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_deploy_check_warns_when_hsts_is_switched_off(tmp_path: Path) -> None:
    result = _run(
        tmp_path,
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        **PRODUCTION_ENV,
        SECURE_HSTS_SECONDS="0",
    )
    assert result.returncode != 0 and "security.W004" in result.stderr


PROBE = """
import django; django.setup()
from django.test import Client
client = Client(HTTP_HOST="models.example.org")
plain = client.get("/accounts/login/")
print("redirect", plain.status_code, plain.headers.get("Location"))
secure = client.get("/healthz", secure=True)
print("hsts", secure.headers.get("Strict-Transport-Security"))
print("csp", secure.headers.get("Content-Security-Policy"))
print("csp-report-only", secure.headers.get("Content-Security-Policy-Report-Only"))
"""


def test_production_insists_on_https_and_sends_hsts_and_csp(tmp_path: Path) -> None:
    result = _run(tmp_path, ["-c", PROBE], **PRODUCTION_ENV)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["redirect"] == "301 https://models.example.org/accounts/login/"
    assert lines["hsts"] == "max-age=31536000; includeSubDomains; preload"
    assert "default-src 'self'" in lines["csp"] and "script-src 'self' 'nonce-" in lines["csp"]
    assert lines["csp-report-only"] == "None"


def test_redis_url_selects_the_degrading_cache(tmp_path: Path) -> None:
    code = (
        "import django; django.setup(); from django.conf import settings; print(settings.CACHES['default']['BACKEND'])"
    )
    result = _run(tmp_path, ["-c", code], REDIS_URL="redis://127.0.0.1:6/0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "portal.cache.DegradingRedisCache"

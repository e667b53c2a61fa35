"""Redis down: pages lose the cache, not their answer (portal/cache.py)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from django.core.cache import cache
from django.urls import reverse

from portal.cache import DegradingRedisCache
from tests import factories
from tests.conftest import login


def _dead_redis_url() -> str:
    # A port that was free a moment ago: nothing listens there, so every connect is refused.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def redis_down(settings: Any) -> None:
    settings.CACHES = {
        "default": {
            "BACKEND": "portal.cache.DegradingRedisCache",
            "LOCATION": _dead_redis_url(),
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
    DegradingRedisCache._down_until = 0.0  # each test meets Redis "fresh", not in a back-off window


def test_reads_miss_and_writes_drop_while_redis_is_down(redis_down: None, caplog: Any) -> None:
    assert cache.get("k", "fallback") == "fallback"
    cache.set("k", 1)
    assert cache.get_many(["k"]) == {}
    assert cache.add("cooldown", 1) is True  # a cooldown lets the action through
    assert cache.get_or_set("k", 2) == 2
    with pytest.raises(ValueError):
        cache.incr("counter")
    assert "Check that Redis at REDIS_URL is up" in caplog.text


def test_pages_and_sign_in_work_while_redis_is_down(
    redis_down: None, client: Any, reviewer: Any, applicant: Any, gated_release: Any
) -> None:
    factories.make_application(applicant, gated_release)
    assert client.get(reverse("catalog")).status_code == 200

    # Sign-in fails open: wrong passwords are refused as usual, the right one signs in.
    for _ in range(3):
        wrong = client.post(reverse("login"), {"email": applicant.email, "password": "not-the-password"})
        assert wrong.status_code == 400 and b"incorrect" in wrong.content
    right = client.post(reverse("login"), {"email": applicant.email, "password": factories.PASSWORD})
    assert right.status_code == 302

    # The review dashboard caches its figures; without Redis it computes them every time.
    login(client, reviewer)
    assert client.get(reverse("review-queue")).status_code == 200
    assert client.get(reverse("review-queue")).status_code == 200

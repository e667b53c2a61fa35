"""The hot-path counters, both implementations: Redis (shared by every portal process; the real server
from REDIS_URL) and this process's memory."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.counters import LocalCounters, RedisCounters


@pytest.fixture(params=["redis", "local"])
def counters(request: Any, settings: Any) -> Any:
    if request.param == "redis":
        if not settings.REDIS_URL:
            pytest.skip("REDIS_URL is not set")
        return RedisCounters(settings.REDIS_URL, settings.GATEWAY_REDIS_PREFIX)
    return LocalCounters()


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


NOW = 1_800_000_010.0  # 10 s into a minute


def test_requests_per_minute_refuses_past_the_limit_and_resets_next_minute(counters: Any) -> None:
    async def scenario() -> list[Any]:
        results = []
        for index in range(3):
            refusal = await counters.admit(
                scope="1:1", request_id=f"r{index}", requests_per_minute=2, max_concurrent=10, now=NOW
            )
            results.append(refusal)
            await counters.release(scope="1:1", replica_id=None, request_id=f"r{index}")
        results.append(
            await counters.admit(scope="1:1", request_id="next", requests_per_minute=2, max_concurrent=10, now=NOW + 60)
        )
        return results

    first, second, third, next_minute = run(scenario())
    assert first is None and second is None and next_minute is None
    assert third.limit == "requests_per_minute" and third.current == 2
    assert third.retry_after == 50  # the rest of the minute


def test_concurrency_counts_leases_until_released_or_expired(counters: Any, settings: Any) -> None:
    settings.GATEWAY_LEASE_SECONDS = 30

    async def scenario() -> list[Any]:
        take = counters.admit
        out = [
            await take(scope="2:1", request_id="a", requests_per_minute=100, max_concurrent=2, now=NOW),
            await take(scope="2:1", request_id="b", requests_per_minute=100, max_concurrent=2, now=NOW),
            await take(scope="2:1", request_id="c", requests_per_minute=100, max_concurrent=2, now=NOW),
            # another scope (user or release) is not affected
            await take(scope="3:1", request_id="d", requests_per_minute=100, max_concurrent=2, now=NOW),
        ]
        await counters.release(scope="2:1", replica_id=None, request_id="a")
        out.append(await take(scope="2:1", request_id="e", requests_per_minute=100, max_concurrent=2, now=NOW))
        # b renews its lease, e does not: after the lease time only b still counts
        await counters.renew(scope="2:1", replica_id=None, request_id="b", now=NOW + 20)
        out.append(await take(scope="2:1", request_id="f", requests_per_minute=100, max_concurrent=2, now=NOW + 31))
        out.append(await take(scope="2:1", request_id="g", requests_per_minute=100, max_concurrent=2, now=NOW + 31))
        return out

    a, b, c, d, e, f, g = run(scenario())
    assert a is None and b is None and d is None and e is None
    assert c.limit == "concurrent_requests" and c.current == 2
    assert f is None  # e's lease expired: a crashed request frees its slot
    assert g.limit == "concurrent_requests"
    assert counters.in_flight(scope="2:1", now=NOW + 31) == 2


def test_a_refused_request_takes_nothing(counters: Any) -> None:
    async def scenario() -> Any:
        await counters.admit(scope="4:1", request_id="a", requests_per_minute=100, max_concurrent=1, now=NOW)
        for index in range(5):  # refused for concurrency: not counted in the minute either
            await counters.admit(scope="4:1", request_id=f"x{index}", requests_per_minute=3, max_concurrent=1, now=NOW)
        await counters.release(scope="4:1", replica_id=None, request_id="a")
        return await counters.admit(scope="4:1", request_id="b", requests_per_minute=3, max_concurrent=1, now=NOW)

    assert run(scenario()) is None


def test_replica_choice_is_least_outstanding(counters: Any) -> None:
    async def scenario() -> list[int]:
        picks = []
        for index in range(4):
            picks.append(await counters.pick_replica(replica_ids=[10, 11], request_id=f"p{index}", now=NOW))
        # finishing two requests on replica 10 makes it the least busy
        for index, replica in enumerate(picks):
            if replica == 10:
                await counters.release_replica(replica_id=10, request_id=f"p{index}")
        picks.append(await counters.pick_replica(replica_ids=[11, 10], request_id="q", now=NOW))
        return picks

    picks = run(scenario())
    assert sorted(picks[:4]) == [10, 10, 11, 11]  # alternates: always the one with fewer
    assert picks[4] == 10
    assert counters.outstanding(replica_ids=[10, 11], now=NOW) == {10: 1, 11: 2}


def test_redis_down_admits_rather_than_failing(settings: Any) -> None:
    counters = RedisCounters("redis://127.0.0.1:1/0", "gwdown:")

    async def scenario() -> tuple[Any, int]:
        refusal = await counters.admit(scope="5:1", request_id="a", requests_per_minute=1, max_concurrent=1, now=NOW)
        replica = await counters.pick_replica(replica_ids=[7], request_id="a", now=NOW)
        await counters.release(scope="5:1", replica_id=7, request_id="a")
        return refusal, replica

    assert run(scenario()) == (None, 7)
    assert counters.outstanding(replica_ids=[7], now=NOW) == {7: 0}

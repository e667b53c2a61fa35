"""Counters of the gateway's hot path, outside the database: requests per minute (a fixed one-minute
window per user and release), in-flight requests per user and release (the concurrency limit), and
in-flight requests per replica (least-outstanding load balancing).

In-flight requests are leases, not bare counters: a sorted set of request ids scored by when the lease
ends. A running request renews its lease at every access re-check; a portal process that dies
mid-request leaks nothing for longer than GATEWAY_LEASE_SECONDS.

Two implementations behind one interface, picked by GATEWAY_COUNTERS: `RedisCounters` (every portal
process shares them; each check-and-take is one Lua script, so two processes never both take the last
slot) and `LocalCounters` (this process's memory: a single-process demo without Redis).

Redis being down must not take the API down with it: the counters then admit (logged), and the
database-side checks (access, tokens per day) still apply.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import threading
import weakref
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

from django.conf import settings

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class CounterRefusal:
    limit: str  # requests_per_minute or concurrent_requests
    current: int
    retry_after: int


class Counters(Protocol):
    async def admit(
        self, *, scope: str, request_id: str, requests_per_minute: int, max_concurrent: int, now: float
    ) -> CounterRefusal | None:
        """Count the request in its minute and take a concurrency lease, or refuse (taking nothing)."""
        ...

    async def pick_replica(self, *, replica_ids: list[int], request_id: str, now: float) -> int:
        """The replica with the fewest in-flight requests (ties: the first given); takes a lease on it."""
        ...

    async def renew(self, *, scope: str, replica_id: int | None, request_id: str, now: float) -> None: ...

    async def release_replica(self, *, replica_id: int, request_id: str) -> None: ...

    async def release(self, *, scope: str, replica_id: int | None, request_id: str) -> None: ...

    def in_flight(self, *, scope: str, now: float) -> int: ...

    def outstanding(self, *, replica_ids: list[int], now: float) -> dict[int, int]: ...


def _window(now: float) -> tuple[int, int]:
    """(window number, seconds until it ends)."""
    window = int(now // WINDOW_SECONDS)
    return window, max(1, math.ceil((window + 1) * WINDOW_SECONDS - now))


# --- Redis ------------------------------------------------------------------------------------

_ADMIT = """
-- KEYS[1] rate key of this minute, KEYS[2] lease set of the scope
-- ARGV now, requests_per_minute, max_concurrent, lease_until, request_id, key_ttl
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
local rate = tonumber(redis.call('GET', KEYS[1]) or '0')
if rate >= tonumber(ARGV[2]) then return {1, rate} end
local running = redis.call('ZCARD', KEYS[2])
if running >= tonumber(ARGV[3]) then return {2, running} end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], 120)
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return {0, 0}
"""

_PICK = """
-- KEYS replica lease sets, in preference order; ARGV now, lease_until, request_id, key_ttl
local now = tonumber(ARGV[1])
local best, best_count = 1, nil
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local count = redis.call('ZCARD', key)
  if best_count == nil or count < best_count then best, best_count = i, count end
end
redis.call('ZADD', KEYS[best], ARGV[2], ARGV[3])
redis.call('EXPIRE', KEYS[best], ARGV[4])
return best
"""


class RedisCounters:
    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        # One asyncio client per event loop (a client's connections belong to the loop that made them).
        # (client, admit script, pick script)
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._sync: Any = None

    def _client(self) -> tuple[Any, Any, Any]:
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is None:
            import redis.asyncio

            client = redis.asyncio.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
            entry = (client, client.register_script(_ADMIT), client.register_script(_PICK))
            self._clients[loop] = entry
        return entry

    def _sync_client(self) -> Any:
        if self._sync is None:
            import redis

            self._sync = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        return self._sync

    def _rate_key(self, scope: str, window: int) -> str:
        return f"{self.prefix}rate:{scope}:{window}"

    def _scope_key(self, scope: str) -> str:
        return f"{self.prefix}inflight:{scope}"

    def _replica_key(self, replica_id: int) -> str:
        return f"{self.prefix}replica:{replica_id}"

    def _ttl(self) -> int:
        return settings.GATEWAY_LEASE_SECONDS * 2

    async def admit(
        self, *, scope: str, request_id: str, requests_per_minute: int, max_concurrent: int, now: float
    ) -> CounterRefusal | None:
        window, window_left = _window(now)
        try:
            _, admit_script, _ = self._client()
            outcome, current = await admit_script(
                keys=[self._rate_key(scope, window), self._scope_key(scope)],
                args=[
                    now,
                    requests_per_minute,
                    max_concurrent,
                    now + settings.GATEWAY_LEASE_SECONDS,
                    request_id,
                    self._ttl(),
                ],
            )
        except Exception as error:  # noqa: BLE001 - see the module docstring: admit, log
            log.warning("gateway counters unavailable, admitting without rate or concurrency limits: %s", error)
            return None
        if outcome == 1:
            return CounterRefusal("requests_per_minute", int(current), window_left)
        if outcome == 2:
            return CounterRefusal("concurrent_requests", int(current), 1)
        return None

    async def pick_replica(self, *, replica_ids: list[int], request_id: str, now: float) -> int:
        try:
            _, _, pick_script = self._client()
            index = await pick_script(
                keys=[self._replica_key(replica_id) for replica_id in replica_ids],
                args=[now, now + settings.GATEWAY_LEASE_SECONDS, request_id, self._ttl()],
            )
            return replica_ids[int(index) - 1]
        except Exception as error:  # noqa: BLE001
            log.warning("gateway counters unavailable, picking a replica at random: %s", error)
            return random.choice(replica_ids)

    async def renew(self, *, scope: str, replica_id: int | None, request_id: str, now: float) -> None:
        until = now + settings.GATEWAY_LEASE_SECONDS
        try:
            pipe = self._client()[0].pipeline(transaction=False)
            keys = [self._scope_key(scope)] + ([self._replica_key(replica_id)] if replica_id is not None else [])
            for key in keys:
                pipe.zadd(key, {request_id: until}, xx=True)
                pipe.expire(key, self._ttl())
            await pipe.execute()
        except Exception as error:  # noqa: BLE001
            log.warning("gateway counters unavailable, lease not renewed: %s", error)

    async def release_replica(self, *, replica_id: int, request_id: str) -> None:
        try:
            await self._client()[0].zrem(self._replica_key(replica_id), request_id)
        except Exception as error:  # noqa: BLE001
            log.warning("gateway counters unavailable, replica lease left to expire: %s", error)

    async def release(self, *, scope: str, replica_id: int | None, request_id: str) -> None:
        try:
            pipe = self._client()[0].pipeline(transaction=False)
            pipe.zrem(self._scope_key(scope), request_id)
            if replica_id is not None:
                pipe.zrem(self._replica_key(replica_id), request_id)
            await pipe.execute()
        except Exception as error:  # noqa: BLE001
            log.warning("gateway counters unavailable, leases left to expire: %s", error)

    def in_flight(self, *, scope: str, now: float) -> int:
        try:
            return int(self._sync_client().zcount(self._scope_key(scope), f"({now}", "+inf"))
        except Exception:  # noqa: BLE001 - a page showing the figure must not fail
            return 0

    def outstanding(self, *, replica_ids: list[int], now: float) -> dict[int, int]:
        try:
            pipe = self._sync_client().pipeline(transaction=False)
            for replica_id in replica_ids:
                pipe.zcount(self._replica_key(replica_id), f"({now}", "+inf")
            return {replica_id: int(count) for replica_id, count in zip(replica_ids, pipe.execute(), strict=True)}
        except Exception:  # noqa: BLE001
            return dict.fromkeys(replica_ids, 0)


# --- This process's memory --------------------------------------------------------------------


class LocalCounters:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rates: dict[tuple[str, int], int] = {}
        self._leases: dict[str, dict[str, float]] = {}

    def _live(self, key: str, now: float) -> dict[str, float]:
        leases = self._leases.setdefault(key, {})
        for member in [m for m, until in leases.items() if until <= now]:
            del leases[member]
        return leases

    async def admit(
        self, *, scope: str, request_id: str, requests_per_minute: int, max_concurrent: int, now: float
    ) -> CounterRefusal | None:
        window, window_left = _window(now)
        with self._lock:
            for key in [key for key in self._rates if key[1] < window]:
                del self._rates[key]
            rate = self._rates.get((scope, window), 0)
            if rate >= requests_per_minute:
                return CounterRefusal("requests_per_minute", rate, window_left)
            leases = self._live(f"scope:{scope}", now)
            if len(leases) >= max_concurrent:
                return CounterRefusal("concurrent_requests", len(leases), 1)
            self._rates[(scope, window)] = rate + 1
            leases[request_id] = now + settings.GATEWAY_LEASE_SECONDS
        return None

    async def pick_replica(self, *, replica_ids: list[int], request_id: str, now: float) -> int:
        with self._lock:
            counts = [len(self._live(f"replica:{replica_id}", now)) for replica_id in replica_ids]
            chosen = replica_ids[counts.index(min(counts))]
            self._leases[f"replica:{chosen}"][request_id] = now + settings.GATEWAY_LEASE_SECONDS
        return chosen

    async def renew(self, *, scope: str, replica_id: int | None, request_id: str, now: float) -> None:
        until = now + settings.GATEWAY_LEASE_SECONDS
        with self._lock:
            keys = [f"scope:{scope}"] + ([f"replica:{replica_id}"] if replica_id is not None else [])
            for key in keys:
                leases = self._leases.get(key, {})
                if request_id in leases:
                    leases[request_id] = until

    async def release_replica(self, *, replica_id: int, request_id: str) -> None:
        with self._lock:
            self._leases.get(f"replica:{replica_id}", {}).pop(request_id, None)

    async def release(self, *, scope: str, replica_id: int | None, request_id: str) -> None:
        with self._lock:
            self._leases.get(f"scope:{scope}", {}).pop(request_id, None)
            if replica_id is not None:
                self._leases.get(f"replica:{replica_id}", {}).pop(request_id, None)

    def in_flight(self, *, scope: str, now: float) -> int:
        with self._lock:
            return len(self._live(f"scope:{scope}", now))

    def outstanding(self, *, replica_ids: list[int], now: float) -> dict[int, int]:
        with self._lock:
            return {replica_id: len(self._live(f"replica:{replica_id}", now)) for replica_id in replica_ids}


@cache
def _build(kind: str, url: str, prefix: str) -> Counters:
    if kind == "redis":
        return RedisCounters(url, prefix)
    return LocalCounters()


def get_counters() -> Counters:
    """The counters the settings pick (one instance per configuration, so tests may switch)."""
    return _build(settings.GATEWAY_COUNTERS, settings.REDIS_URL, settings.GATEWAY_REDIS_PREFIX)


def scope_of(*, user_id: int, release_id: int) -> str:
    return f"{user_id}:{release_id}"

"""A Redis cache that degrades to "no cache" while Redis is unreachable.

Everything we keep in the cache can be recomputed or forgotten (dashboard figures, sign-in
throttle counters, resend cooldowns), so a Redis outage must cost speed, never a 500 page.
On a connection error a read is a miss and a write is dropped; the error is logged, and Redis is
left alone for `RETRY_SECONDS` so a dead server does not add a connect attempt to every call.

The sign-in throttle therefore fails open while Redis is down: counters read as empty, so sign-in
keeps working. Failing closed would turn a cache outage into a site-wide sign-in outage (and let
anyone who can exhaust Redis lock everybody out); password hashing still bounds the guessing rate,
and the logged errors page the operator.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
RETRY_SECONDS = 5.0


class DegradingRedisCache(RedisCache):
    _down_until = 0.0  # time.monotonic() before which Redis is not tried again; per process

    def _call(self, operation: str, fallback: Any, *args: Any, **kwargs: Any) -> Any:
        if time.monotonic() < DegradingRedisCache._down_until:
            return fallback
        try:
            return getattr(super(), operation)(*args, **kwargs)
        except UNREACHABLE as error:
            DegradingRedisCache._down_until = time.monotonic() + RETRY_SECONDS
            logger.error(
                "Cache %s failed (%s); serving without the cache for %.0f s. Check that Redis at REDIS_URL is up.",
                operation,
                error,
                RETRY_SECONDS,
            )
            return fallback

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        return self._call("get", default, key, default, version)

    def get_many(self, keys: Any, version: int | None = None) -> dict[Any, Any]:
        return self._call("get_many", {}, keys, version)

    def has_key(self, key: Any, version: int | None = None) -> bool:
        return self._call("has_key", False, key, version)

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> None:
        self._call("set", None, key, value, timeout, version)

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        # True: a cooldown built on add() lets the action through rather than blocking it forever.
        return self._call("add", True, key, value, timeout, version)

    def set_many(self, data: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> list[Any]:
        return self._call("set_many", [], data, timeout, version)

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        return self._call("touch", False, key, timeout, version)

    def delete(self, key: Any, version: int | None = None) -> bool:
        return self._call("delete", False, key, version)

    def delete_many(self, keys: Any, version: int | None = None) -> None:
        self._call("delete_many", None, keys, version)

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        value = self._call("incr", None, key, delta, version)
        if value is None:  # Redis is down: the counter is as good as missing
            raise ValueError(f"Key {key!r} not found (the cache is unreachable).")
        return value

    def clear(self) -> None:
        self._call("clear", None)

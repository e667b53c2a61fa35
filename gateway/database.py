"""Database work of the async API views, in the request's thread, giving the connection back after.

A completion waits on the engine for seconds to minutes. Django keeps a thread's connection until the
request ends, so with the PostgreSQL pool (portal/settings.py, DB_POOL) every request in flight would
hold one pooled connection all that time, and the pool's size would cap concurrent requests: the next
ones wait for a connection, then fail. Each call here returns its connection to the pool as it ends.
Without a pool (SQLite, or DB_POOL off) the connection stays, as Django would keep it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import connection

P = ParamSpec("P")
R = TypeVar("R")


def in_thread(function: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(function)
    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        finally:
            if getattr(connection, "pool", None) is not None:
                connection.close()  # back to the pool

    return sync_to_async(call)

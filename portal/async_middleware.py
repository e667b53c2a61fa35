"""What the portal needs to run under ASGI without regressions.

- `StaticFilesMiddleware`: WhiteNoise, made async-capable. One synchronous middleware in the stack makes
  Django run every request, the gateway's async views included, through a thread that waits for the
  view; with this, an async view stays on the event loop.
- `SyncStreamingMiddleware`: under ASGI Django reads a synchronous streaming body whole into memory
  before sending it (`StreamingHttpResponse.__aiter__` calls `list()` on it): a multi-gigabyte file
  download or a million-row CSV export would sit in RAM. This hands such a body to the server chunk by
  chunk, each pulled in the request's own thread (where its database cursor lives).

Under WSGI (gunicorn, the test client) both are plain pass-throughs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from whitenoise.middleware import WhiteNoiseMiddleware  # type: ignore[import-untyped]

# A pull from a synchronous body returns up to this many bytes (several small CSV rows in one
# thread hop, or one block of a file).
_BATCH_BYTES = 256 * 1024


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[..., Any]) -> None:
        super().__init__(get_response)
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self._acall(request)
        return super().__call__(request)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        static_file = self.find_file(request.path_info) if self.autorefresh else self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)


def _next_batch(chunks: Iterator[bytes]) -> bytes | None:
    """Up to _BATCH_BYTES from the iterator; None once it is exhausted."""
    parts: list[bytes] = []
    size = 0
    for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size >= _BATCH_BYTES:
            break
    else:
        if not parts:
            return None
    return b"".join(parts)


async def _pull(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    pull = sync_to_async(_next_batch, thread_sensitive=True)
    while (batch := await pull(chunks)) is not None:
        yield batch


class SyncStreamingMiddleware:
    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[..., Any]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self._acall(request)
        return self.get_response(request)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        response = await self.get_response(request)
        if getattr(response, "streaming", False) and not getattr(response, "is_async", False):
            # `streaming_content` maps make_bytes over the body; a FileResponse keeps its file in
            # `_resource_closers`, so response.close() still closes (and settles) it.
            response.streaming_content = _pull(iter(response.streaming_content))
        return response

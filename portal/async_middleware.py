"""What the portal needs to run under ASGI without regressions, or without a cost per request.

- `StaticFilesMiddleware`: WhiteNoise, made async-capable. One synchronous middleware in the stack makes
  Django run every request, the gateway's async views included, through a thread that waits for the
  view; with this, an async view stays on the event loop.
- `SyncStreamingMiddleware`: under ASGI Django reads a synchronous streaming body whole into memory
  before sending it (`StreamingHttpResponse.__aiter__` calls `list()` on it): a multi-gigabyte file
  download or a million-row CSV export would sit in RAM. This hands such a body to the server chunk by
  chunk, each pulled in the request's own thread (where its database cursor lives).
- Django's own middleware (security, sessions, common, CSRF, authentication, messages, clickjacking)
  with their hooks on the event loop. Under ASGI Django runs each hook of a `MiddlewareMixin` through a
  thread hop, to be safe (~0.3 ms each on a small VM, thirteen a request); these hooks only read and
  write headers, cookies and lazy objects. The cases that can reach the database (a session to save,
  messages to store, CSRF kept in the session, a POST body to parse) still go through the thread.
  `ON_THE_LOOP` maps each to its subclass here; the ASGI application (portal/asgi.py) loads those.

Under WSGI (gunicorn, the test client) the first two are plain pass-throughs, and Django's own
middleware is loaded as it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.middleware import clickjacking, common, csrf, security
from django.utils.deprecation import MiddlewareMixin
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


# --- Django's middleware, hooks on the event loop ---------------------------------------------------


class _OnTheLoop(MiddlewareMixin):
    """`MiddlewareMixin.__acall__` without a thread hop per hook. A subclass names the cases where a
    hook may touch the database; those still run in the request's thread."""

    def request_needs_thread(self, request: HttpRequest) -> bool:
        return False

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        return False

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = None
        process_request = getattr(self, "process_request", None)
        if process_request is not None:
            if self.request_needs_thread(request):
                response = await sync_to_async(process_request, thread_sensitive=True)(request)
            else:
                response = process_request(request)
        if response is None:
            response = await cast(Awaitable[HttpResponseBase], self.get_response(request))  # async mode
        process_response = getattr(self, "process_response", None)
        if process_response is not None:
            if self.response_needs_thread(request, response):
                response = await sync_to_async(process_response, thread_sensitive=True)(request, response)
            else:
                response = process_response(request, response)
        return response


class SecurityMiddleware(_OnTheLoop, security.SecurityMiddleware):
    pass


class CommonMiddleware(_OnTheLoop, common.CommonMiddleware):
    pass


class XFrameOptionsMiddleware(_OnTheLoop, clickjacking.XFrameOptionsMiddleware):
    pass


class AuthenticationMiddleware(_OnTheLoop, auth.AuthenticationMiddleware):
    """Sets the lazy `request.user` / `request.auser`; the user is read when first asked for."""


class SessionMiddleware(_OnTheLoop, sessions.SessionMiddleware):
    """The session is loaded lazily, by whoever reads it; only a save at the end needs the thread."""

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        session = getattr(request, "session", None)
        return session is not None and (session.modified or settings.SESSION_SAVE_EVERY_REQUEST)


class MessageMiddleware(_OnTheLoop, messages.MessageMiddleware):
    """Storing messages may write the session; a request that neither read nor added any stores nothing."""

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        storage = getattr(request, "_messages", None)
        return storage is not None and (storage.used or storage.added_new)


class CsrfViewMiddleware(_OnTheLoop, csrf.CsrfViewMiddleware):
    """The secret comes from a cookie (or the session with CSRF_USE_SESSIONS: then the thread). The view
    check reads the POST body for a form token: an unsafe method to a view that is not exempt also
    goes to the thread, since parsing a large upload is file I/O."""

    def __init__(self, get_response: Callable[..., Any]) -> None:
        super().__init__(get_response)
        if self.async_mode:
            # Django adapts each `process_view` by its kind: a coroutine function runs without a hop.
            self.process_view = self._process_view_async  # type: ignore[method-assign,assignment]

    def request_needs_thread(self, request: HttpRequest) -> bool:
        return bool(settings.CSRF_USE_SESSIONS)

    def response_needs_thread(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        return bool(settings.CSRF_USE_SESSIONS)

    async def _process_view_async(
        self, request: HttpRequest, callback: Callable[..., Any], args: Any, kwargs: Any
    ) -> HttpResponseBase | None:
        check = super().process_view
        if getattr(callback, "csrf_exempt", False) or request.method in ("GET", "HEAD", "OPTIONS", "TRACE"):
            return check(request, callback, args, kwargs)
        return await sync_to_async(check, thread_sensitive=True)(request, callback, args, kwargs)


# What the ASGI application loads in place of each of Django's middleware in settings.MIDDLEWARE.
ON_THE_LOOP = {
    "django.middleware.security.SecurityMiddleware": f"{__name__}.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware": f"{__name__}.SessionMiddleware",
    "django.middleware.common.CommonMiddleware": f"{__name__}.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware": f"{__name__}.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware": f"{__name__}.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware": f"{__name__}.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware": f"{__name__}.XFrameOptionsMiddleware",
}

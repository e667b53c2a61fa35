"""The portal under ASGI (portal/asgi.py): every middleware runs in async mode, so the gateway's async
views are never pinned to a thread, and synchronous streaming bodies (downloads, CSV exports) are sent
chunk by chunk instead of being read whole into memory first."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.http import HttpRequest, StreamingHttpResponse
from django.utils.module_loading import import_string

from portal.async_middleware import SyncStreamingMiddleware


def test_every_middleware_is_async_capable() -> None:
    sync_only = [path for path in settings.MIDDLEWARE if not getattr(import_string(path), "async_capable", False)]
    assert sync_only == [], f"{sync_only} would run every async view through a waiting thread"


def test_a_synchronous_streaming_body_is_pulled_chunk_by_chunk() -> None:
    pulled: list[int] = []

    def body() -> Iterator[bytes]:
        for index in range(4):
            pulled.append(index)
            yield bytes([index]) * (300 * 1024)  # each over a batch: one pull each

    async def view(request: HttpRequest) -> StreamingHttpResponse:
        return StreamingHttpResponse(body())

    async def scenario() -> tuple[list[int], int]:
        response = await SyncStreamingMiddleware(view)(HttpRequest())
        assert response.is_async
        chunks = aiter(response)
        first = await anext(chunks)
        seen = list(pulled)
        rest = [chunk async for chunk in chunks]
        return seen, len(first) + sum(len(chunk) for chunk in rest)

    seen, total = asyncio.run(scenario())
    assert seen == [0]  # the first chunk left before the rest of the body was read
    assert total == 4 * 300 * 1024


def test_the_asgi_application_serves_a_page(db: Any) -> None:
    from portal.asgi import application

    async def get(path: str) -> list[dict[str, Any]]:
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80),
        }  # fmt: skip
        communicator = ApplicationCommunicator(application, scope)
        await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
        messages = [await communicator.receive_output(10)]
        while messages[-1].get("more_body", messages[-1]["type"] == "http.response.start"):
            messages.append(await communicator.receive_output(10))
        return messages

    messages = asyncio.run(get("/v1/models"))
    assert messages[0]["status"] == 401  # the async API view, through the async middleware stack
    assert b'"invalid_api_key"' in b"".join(m.get("body", b"") for m in messages[1:])

"""The portal under ASGI (portal/asgi.py): every middleware runs in async mode, so the gateway's async
views are never pinned to a thread, and synchronous streaming bodies (downloads, CSV exports) are sent
chunk by chunk instead of being read whole into memory first. Django's middleware runs its hooks on the
event loop, yet sessions, messages and CSRF still work; PostgreSQL connections come from a pool."""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest
from asgiref.sync import iscoroutinefunction
from asgiref.testing import ApplicationCommunicator
from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils.module_loading import import_string

from portal.async_middleware import CsrfViewMiddleware, SessionMiddleware, SyncStreamingMiddleware, _OnTheLoop
from tests import factories
from tests.inference_worker._server import free_port
from tests.live import database_url_of_test_db, sessions_of, start_portal, wait_for_sessions_to_end


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


def test_the_asgi_application_loads_djangos_middleware_with_hooks_on_the_loop() -> None:
    from portal.asgi import application

    loaded = {type(method.__self__) for method in application._view_middleware}  # process_view hooks
    assert CsrfViewMiddleware in loaded
    assert all(iscoroutinefunction(method) for method in application._view_middleware)  # none adapted
    assert "django.middleware.csrf.CsrfViewMiddleware" in settings.MIDDLEWARE  # what check --deploy reads


def test_django_middleware_hooks_run_on_the_event_loop_and_a_session_save_in_a_thread() -> None:
    threads: dict[str, int] = {}

    class Probe(_OnTheLoop):
        def process_request(self, request: HttpRequest) -> None:
            threads["request"] = threading.get_ident()

        def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
            threads["response"] = threading.get_ident()
            return response

    class Session:
        modified = True

    async def view(request: HttpRequest) -> HttpResponse:
        return HttpResponse("ok")

    async def scenario() -> tuple[int, bool, bool]:
        request = HttpRequest()
        await Probe(view)(request)
        request.session = Session()  # type: ignore[attr-defined]
        saving = SessionMiddleware(view).response_needs_thread(request, HttpResponse())
        Session.modified = False
        return threading.get_ident(), saving, SessionMiddleware(view).response_needs_thread(request, HttpResponse())

    loop_thread, saving, unchanged = asyncio.run(scenario())
    assert threads == {"request": loop_thread, "response": loop_thread}
    assert saving and not unchanged


@pytest.mark.django_db(transaction=True)
def test_sign_in_and_out_under_asgi_keeps_session_csrf_and_messages() -> None:
    """Sessions saved, the CSRF check enforced and a flash message shown, through the ASGI stack."""
    from portal.asgi import application

    factories.make_user("asgi@example.org")

    async def scenario() -> None:
        transport = httpx2.ASGITransport(app=application)
        async with httpx2.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            page = await client.get("/accounts/login/")
            assert page.status_code == 200 and "csrftoken" in client.cookies
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
            assert token is not None
            credentials = {"email": "asgi@example.org", "password": factories.PASSWORD}
            refused = await client.post("/accounts/login/", data=credentials)
            assert refused.status_code == 403 and "sessionid" not in client.cookies

            signed_in = await client.post(
                "/accounts/login/", data={**credentials, "csrfmiddlewaretoken": token.group(1)}
            )
            assert signed_in.status_code == 302 and "sessionid" in client.cookies
            profile = await client.get("/accounts/profile/")
            assert profile.status_code == 200 and "asgi@example.org" in profile.text

            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', profile.text)
            assert token is not None
            signed_out = await client.post("/accounts/logout/", data={"csrfmiddlewaretoken": token.group(1)})
            assert signed_out.status_code == 302
            home = await client.get(signed_out.headers["location"], follow_redirects=True)
            assert "You are signed out." in home.text
            assert (await client.get("/accounts/profile/")).status_code == 302  # to the sign-in page

    asyncio.run(scenario())


@pytest.mark.django_db(transaction=True)
def test_the_asgi_process_serves_more_requests_than_its_pool_has_postgresql_connections(tmp_path: Path) -> None:
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the connection pool is for PostgreSQL (make test uses it when installed; CI always does)")
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url_of_test_db(application_name="asgi-pool-test"),
        "DB_POOL_MAX_SIZE": "2",
        "PORTAL_VAR_DIR": str(tmp_path),
        "DEBUG": "0",
    }
    portal = start_portal(env, port=port, log=tmp_path / "portal.log")
    try:
        # Each request runs its database work in a thread of its own; every one of them must give its
        # connection back (a lost one would leave the next requests waiting for the pool, then failing).
        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(pool.map(lambda _: httpx2.get(f"{portal.url}/healthz", timeout=30).status_code, range(48)))
        assert statuses == [200] * 48
        held = sessions_of("asgi-pool-test")
        assert 1 <= held <= 2, f"the portal holds {held} connections; its pool has at most 2"
    finally:
        portal.stop()
        wait_for_sessions_to_end("asgi-pool-test")

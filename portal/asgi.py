"""The portal as an ASGI application: `uvicorn portal.asgi:application` (scripts/demo.sh), or
`gunicorn -k uvicorn_worker.UvicornWorker portal.asgi:application` in production.

ASGI, not WSGI, because the gateway's `/v1/completions` streams are async views: an open stream holds
a socket and a coroutine, never a worker thread, so hundreds of concurrent streams fit in one process.
Synchronous views still work; Django runs each in a thread of its own request.
"""

from __future__ import annotations

import os
from typing import Any

import django
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler

from portal import env


class PortalASGIHandler(ASGIHandler):
    """Django's ASGI handler, loading Django's own middleware as `portal.async_middleware.ON_THE_LOOP`
    subclasses it: their hooks run on the event loop instead of one thread hop each (~4 ms a request
    on a small VM). settings.MIDDLEWARE keeps Django's names, which `check --deploy` looks for."""

    def load_middleware(self, is_async: bool = False) -> None:
        from portal.async_middleware import ON_THE_LOOP

        listed = settings.MIDDLEWARE
        settings.MIDDLEWARE = [ON_THE_LOOP.get(path, path) for path in listed]
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = listed


def get_application() -> Any:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    env.UNDER_ASGI = True  # PostgreSQL connections from a pool (DB_POOL), when the settings are not loaded yet
    django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application
    return PortalASGIHandler()


application = get_application()

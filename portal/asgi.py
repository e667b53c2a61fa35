"""The portal as an ASGI application: `uvicorn portal.asgi:application` (scripts/demo.sh), or
`gunicorn -k uvicorn_worker.UvicornWorker portal.asgi:application` in production.

ASGI, not WSGI, because the gateway's `/v1/completions` streams are async views: an open stream holds
a socket and a coroutine, never a worker thread, so hundreds of concurrent streams fit in one process.
Synchronous views still work; Django runs each in a thread of its own request.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
application = get_asgi_application()

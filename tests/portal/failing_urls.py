"""A URLconf with views that fail, to see the portal's own 500 pages (DEBUG off)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path

from portal.urls import handler403, handler404, handler500
from portal.urls import urlpatterns as portal_urlpatterns


def fail(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("a fault the test provoked")


urlpatterns = [path("boom/", fail), path("api/v1/boom/", fail), *portal_urlpatterns]

__all__ = ["handler403", "handler404", "handler500", "urlpatterns"]

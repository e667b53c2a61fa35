from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.template import loader

from access.errors import AccessRefused


def home(request: HttpRequest) -> HttpResponse:
    return redirect("catalog")


def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


def forbidden(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if isinstance(exception, AccessRefused):
        # Revoked, expired, license changed: say why and what to do next, not a bare "not allowed".
        context = {"release": exception.release, "decision": exception.decision}
        return render(request, "access/access_refused.html", context, status=403)
    return render(request, "403.html", {"message": str(exception or "")}, status=403)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse({"code": "not_found", "detail": "No such API endpoint or object."}, status=404)
    return render(request, "404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return JsonResponse({"code": "server_error", "detail": "The server failed; the error is logged."}, status=500)
    # No request context: the context processors may need the database that just failed.
    return HttpResponse(loader.get_template("500.html").render(), status=500)

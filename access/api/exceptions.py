"""One error shape for the whole API: `{"code", "detail", "errors"?}`.

`code` is stable for clients, `detail` is a sentence for people, and `errors` maps field names to
messages (only for input errors), whether the error came from a serializer or from a service.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from access.api.parsers import too_large
from access.errors import AccessError, InvalidInput

NON_FIELD = "non_field_errors"


def flatten_errors(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF error details (nested dicts and lists) → {"field" or "field.0.sub": [messages]}."""
    flat: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            for field_name, messages in flatten_errors(value, name).items():
                flat.setdefault(field_name, []).extend(messages)
    elif isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, (dict, list)):
                # A list of nested errors (ListField children): keep the item index in the name.
                for field_name, messages in flatten_errors(
                    value, f"{prefix}.{index}" if prefix else str(index)
                ).items():
                    flat.setdefault(field_name, []).extend(messages)
            else:
                flat.setdefault(prefix or NON_FIELD, []).append(str(value))
    else:
        flat.setdefault(prefix or NON_FIELD, []).append(str(detail))
    return flat


def invalid_detail(errors: dict[str, list[str]]) -> str:
    fields = [name for name in errors if name != NON_FIELD]
    if not fields:
        return " ".join(errors.get(NON_FIELD, ["The request is not valid."]))
    return "Some fields are not valid: " + ", ".join(fields) + ". See `errors` for what to change."


def _access_error_body(exc: AccessError) -> dict[str, Any]:
    body: dict[str, Any] = {"code": exc.code, "detail": exc.message}
    if isinstance(exc, InvalidInput):
        many = getattr(exc, "errors", None)
        if many:
            body["errors"] = {name: [message] for name, message in many.items()}
            if len(many) > 1:
                body["detail"] = invalid_detail(body["errors"])
        else:
            body["errors"] = {exc.field or NON_FIELD: [exc.message]}
    elif exc.field:
        body["errors"] = {exc.field: [exc.message]}
    return body


def handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """REST_FRAMEWORK["EXCEPTION_HANDLER"]. Anything not handled here is a bug and becomes a 500."""
    if isinstance(exc, AccessError):
        set_rollback()
        return Response(_access_error_body(exc), status=exc.http_status)
    if isinstance(exc, Http404):
        set_rollback()
        message = str(exc.args[0]) if exc.args and exc.args[0] else "Not found."
        return Response({"code": "not_found", "detail": message}, status=status.HTTP_404_NOT_FOUND)
    if isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(*exc.args)
    if isinstance(exc, RequestDataTooBig):
        exc = too_large()
    if not isinstance(exc, exceptions.APIException):
        return None

    headers: dict[str, str] = {}
    auth_header = getattr(exc, "auth_header", None)
    if auth_header:
        headers["WWW-Authenticate"] = auth_header
    wait = getattr(exc, "wait", None)
    if wait:
        headers["Retry-After"] = f"{int(wait)}"
    set_rollback()

    if isinstance(exc, exceptions.ValidationError):
        errors = flatten_errors(exc.detail)
        return Response(
            {"code": "invalid", "detail": invalid_detail(errors), "errors": errors},
            status=exc.status_code,
            headers=headers,
        )
    codes = exc.get_codes()
    code = codes if isinstance(codes, str) else getattr(exc, "default_code", "error")
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return Response({"code": code, "detail": str(detail)}, status=exc.status_code, headers=headers)

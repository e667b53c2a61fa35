"""The API's only request parser: JSON with a size and a nesting bound.

A body of a few thousand `[` made the decoder raise RecursionError, a 500; a body over
DATA_UPLOAD_MAX_MEMORY_SIZE made Django raise RequestDataTooBig, an HTML 400. Here too deep is a 400
and too large a 413 (see `exceptions.handler`), both in the API's JSON error shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from rest_framework import exceptions, parsers, status
from rest_framework.utils import json

# No request of this API nests deeper than a list inside an object; 32 leaves room for any client.
MAX_JSON_DEPTH = 32


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"
    default_detail = "The request body is too large."


def max_body_bytes() -> int:
    # The same bound Django applies to form bodies, so one setting governs both.
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def too_large() -> RequestTooLarge:
    return RequestTooLarge(f"The request body is larger than {max_body_bytes()} bytes. Send less data per request.")


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in `value` (a scalar is 0), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None) -> Any:
        parser_context = parser_context or {}
        limit = max_body_bytes()
        # DRF hands over request.body, which Django bounds when Content-Length is sent; read bounded anyway.
        raw = stream.read(limit + 1)
        if len(raw) > limit:
            raise too_large()
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        try:
            data = json.loads(raw.decode(encoding), parse_constant=json.strict_constant if self.strict else None)
        except RecursionError:
            raise exceptions.ParseError(
                f"The JSON body nests too deeply. Nest lists and objects at most {MAX_JSON_DEPTH} levels."
            ) from None
        except ValueError as exc:  # UnicodeDecodeError included
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
        if _depth(data) > MAX_JSON_DEPTH:
            raise exceptions.ParseError(
                f"The JSON body nests too deeply. Nest lists and objects at most {MAX_JSON_DEPTH} levels."
            )
        return data

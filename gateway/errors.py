"""Errors of the OpenAI-compatible API, in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.

The official `openai` client turns the status into its exception class (401 AuthenticationError,
403 PermissionDeniedError, 404 NotFoundError, 429 RateLimitError) and shows the message.
"""

from __future__ import annotations

from typing import Any

from django.http import JsonResponse


def error_body(message: str, *, type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class GatewayError(Exception):
    """A refusal by the gateway. `code` is stable (usage rows record it); the message is for people."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str,
        code: str,
        param: str | None = None,
        retry_after: int | None = None,
        release_id: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.retry_after = retry_after
        self.release_id = release_id  # the release it concerns, when known (for the usage row)

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)

    def response(self) -> JsonResponse:
        response = JsonResponse(self.body(), status=self.status)
        if self.retry_after is not None:
            response["Retry-After"] = str(self.retry_after)
        if self.status == 401:
            response["WWW-Authenticate"] = "Bearer"
        return response


def bad_request(message: str, *, param: str | None = None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, type="invalid_request_error", code=code, param=param)


def unauthenticated(message: str) -> GatewayError:
    return GatewayError(401, message, type="authentication_error", code="invalid_api_key")


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404,
        f"The model {model!r} does not exist or is not served. GET /v1/models lists the models you may use.",
        type="invalid_request_error",
        code="model_not_found",
        param="model",
    )


def quota_exceeded(limit: str, message: str, *, retry_after: int) -> GatewayError:
    """429 naming the limit: tokens_per_day, requests_per_minute or concurrent_requests."""
    return GatewayError(429, message, type="rate_limit_error", code=limit, retry_after=max(1, retry_after))


def unavailable(message: str, *, retry_after: int = 5) -> GatewayError:
    return GatewayError(503, message, type="service_unavailable", code="no_engine", retry_after=retry_after)

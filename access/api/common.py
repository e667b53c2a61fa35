"""Pieces every API view shares: pagination, the reviewer permission and documented error responses."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse
from rest_framework import pagination, permissions, serializers

from access.api.serializers import ErrorSerializer
from access.selectors import is_reviewer


class Pagination(pagination.PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class IsReviewer(permissions.BasePermission):
    """Reviewers (`selectors.is_reviewer`). Others get 403; anonymous callers 401."""

    message = "Only reviewers can use the review API."
    code = "not_allowed"  # the same code the services' NotAllowed carries

    def has_permission(self, request: Any, view: Any) -> bool:
        return is_reviewer(request.user)


def errors(*statuses: int) -> dict[int, OpenApiResponse]:
    """Documented error responses, all in the one error shape."""
    descriptions = {
        400: "The input is not valid; `errors` names each field and what to change.",
        401: "No credentials, or an unknown, revoked or expired API key.",
        403: "Signed in, but not allowed to do this.",
        404: "No such object, or not yours.",
        409: "The object changed first (another reviewer decided, a new license version…).",
    }
    return {status: OpenApiResponse(ErrorSerializer, description=descriptions[status]) for status in statuses}


def validated(serializer_class: type[serializers.Serializer], data: Any, **kwargs: Any) -> dict[str, Any]:
    """Validate `data` (a body or the query string) or raise a 400 with field errors."""
    serializer = serializer_class(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)

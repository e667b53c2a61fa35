"""The caller's grants and API keys."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from access import selectors
from access.api.common import Pagination, errors, validated
from access.api.serializers import (
    ApiKeyCreatedSerializer,
    ApiKeyCreateInputSerializer,
    ApiKeySerializer,
    GrantSerializer,
)
from access.models import ApiKey, Grant
from access.services.api_keys import api_key_create, api_key_revoke


@extend_schema_view(
    get=extend_schema(
        tags=["grants"],
        operation_id="grants_list",
        summary="My grants, latest expiry first; `active` means usable now (not revoked, not expired)",
        responses={200: GrantSerializer(many=True), **errors(401)},
    )
)
class GrantList(generics.ListAPIView):
    serializer_class = GrantSerializer
    pagination_class = Pagination

    def get_queryset(self) -> QuerySet[Grant]:
        return selectors.user_grants(user=self.request.user)


@extend_schema_view(
    get=extend_schema(
        tags=["api-keys"],
        operation_id="api_keys_list",
        summary="My API keys (the keys themselves are never shown)",
        responses={200: ApiKeySerializer(many=True), **errors(401)},
    ),
    post=extend_schema(
        tags=["api-keys"],
        operation_id="api_keys_create",
        summary="Create an API key; the key is returned once",
        request=ApiKeyCreateInputSerializer,
        responses={201: ApiKeyCreatedSerializer, **errors(400, 401)},
    ),
)
class ApiKeyListCreate(generics.ListCreateAPIView):
    serializer_class = ApiKeySerializer
    pagination_class = Pagination

    def get_queryset(self) -> QuerySet[ApiKey]:
        return selectors.user_api_keys(user=self.request.user)

    def create(self, request: Request, *args: object, **kwargs: object) -> Response:
        data = validated(ApiKeyCreateInputSerializer, request.data)
        key, raw = api_key_create(user=request.user, name=data["name"], expires_at=data.get("expires_at"))
        key.key = raw  # type: ignore[attr-defined]
        return Response(ApiKeyCreatedSerializer(key).data, status=status.HTTP_201_CREATED)


class ApiKeyRevoke(APIView):
    @extend_schema(
        tags=["api-keys"],
        operation_id="api_keys_revoke",
        summary="Revoke one of my API keys (immediate)",
        request=None,
        responses={200: ApiKeySerializer, **errors(401, 404)},
    )
    def post(self, request: Request, key_id: int) -> Response:
        key = selectors.access_api_key(actor=request.user, key_id=key_id)
        api_key_revoke(key=key, actor=request.user)
        key.refresh_from_db()
        return Response(ApiKeySerializer(key).data)

"""The catalog (anyone may read it), license texts and acceptance, and the access check."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, QuerySet
from django.http import Http404
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import generics, permissions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from access import selectors
from access.api.common import Pagination, errors, validated
from access.api.serializers import (
    AccessCheckSerializer,
    FamilySerializer,
    LicenseAcceptanceSerializer,
    LicenseAcceptInputSerializer,
    LicenseTextSerializer,
    ReleaseSerializer,
)
from access.models import ModelFamily, Release
from access.services.audit import RequestMeta
from access.services.licenses import license_accept

TAGS = ["catalog"]


@extend_schema_view(
    get=extend_schema(tags=TAGS, operation_id="releases_list", summary="Listed releases, with their cards")
)
class ReleaseList(generics.ListAPIView):
    permission_classes = (permissions.AllowAny,)
    serializer_class = ReleaseSerializer
    pagination_class = Pagination

    def get_queryset(self) -> QuerySet[Release]:
        return selectors.catalog_releases().select_related("data_card", "model_card")


class ReleaseDetail(APIView):
    permission_classes = (permissions.AllowAny,)

    @extend_schema(
        tags=TAGS,
        operation_id="releases_retrieve",
        summary="One release by slug",
        responses={200: ReleaseSerializer, **errors(404)},
    )
    def get(self, request: Request, slug: str) -> Response:
        return Response(ReleaseSerializer(selectors.release_by_slug(slug)).data)


@extend_schema_view(get=extend_schema(tags=TAGS, operation_id="families_list", summary="Model families"))
class FamilyList(generics.ListAPIView):
    permission_classes = (permissions.AllowAny,)
    serializer_class = FamilySerializer
    pagination_class = Pagination

    def get_queryset(self) -> QuerySet[ModelFamily]:
        return ModelFamily.objects.prefetch_related(
            Prefetch("releases", queryset=Release.objects.filter(is_listed=True).order_by("sort_order", "pk"))
        ).order_by("name", "pk")


def _current_license(release: Release) -> Any:
    current = release.license.current_version
    if current is None:
        raise Http404(f"{release.name} has no published license yet.")
    return current


class ReleaseLicense(APIView):
    permission_classes = (permissions.AllowAny,)

    @extend_schema(
        tags=TAGS,
        operation_id="releases_license_retrieve",
        summary="The license text in force for a release",
        responses={200: LicenseTextSerializer, **errors(404)},
    )
    def get(self, request: Request, slug: str) -> Response:
        release = selectors.release_by_slug(slug)
        current = _current_license(release)
        payload = {
            "release": release.slug,
            "license": release.license.name,
            "license_slug": release.license.slug,
            "version_id": current.pk,
            "version": current.version,
            "published_at": current.published_at,
            "text": current.text,
        }
        return Response(LicenseTextSerializer(payload).data)


class ReleaseLicenseAccept(APIView):
    @extend_schema(
        tags=TAGS,
        operation_id="releases_license_accept",
        summary="Accept the license version you read",
        request=LicenseAcceptInputSerializer,
        responses={201: LicenseAcceptanceSerializer, **errors(400, 401, 404, 409)},
    )
    def post(self, request: Request, slug: str) -> Response:
        release = selectors.release_by_slug(slug)
        data = validated(LicenseAcceptInputSerializer, request.data)
        acceptance = license_accept(
            user=request.user,
            release=release,
            license_version_id=data["license_version_id"],
            meta=RequestMeta.from_request(request),
        )
        return Response(LicenseAcceptanceSerializer(acceptance).data, status=status.HTTP_201_CREATED)


class ReleaseAccess(APIView):
    @extend_schema(
        tags=["grants"],
        operation_id="releases_access_check",
        summary="May I use this release now?",
        description=(
            "Answers for the caller from live rows: an active, unexpired, unrevoked grant (gated releases) "
            "and an acceptance of the license version in force. `reason` is a stable code."
        ),
        responses={200: AccessCheckSerializer, **errors(401, 404)},
    )
    def get(self, request: Request, slug: str) -> Response:
        release = selectors.release_by_slug(slug)
        decision = selectors.release_access_check(user=request.user, release=release)
        payload = {
            "allowed": decision.allowed,
            "reason": decision.reason,
            "message": decision.message,
            "grant_expires_at": decision.grant.expires_at if decision.grant is not None else None,
        }
        return Response(AccessCheckSerializer(payload).data)

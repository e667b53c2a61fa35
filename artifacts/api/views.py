"""API for downloads: the checkpoints a caller may download, their files, signed links and bundles."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics, renderers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from access.api.common import Pagination, errors, validated
from access.services.audit import RequestMeta
from artifacts import selectors
from artifacts.api.serializers import (
    CheckpointDetailSerializer,
    CheckpointSerializer,
    ManifestSerializer,
    ReshardJobCreateSerializer,
    ReshardJobSerializer,
)
from artifacts.models import Checkpoint
from artifacts.services import links, reshard
from artifacts.services.links import Bundle


class TextRenderer(renderers.BaseRenderer):
    media_type = "text/plain"
    format = "txt"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return data.encode() if isinstance(data, str) else str(data).encode()


def _bundle(request: Request, checkpoint_id: int, *, record: bool) -> Bundle:
    checkpoint, _ = selectors.access_downloadable_checkpoint(actor=request.user, checkpoint_id=checkpoint_id)
    return links.links_issue(
        user=request.user,
        checkpoint=checkpoint,
        base_url=request.build_absolute_uri("/").rstrip("/"),
        link_url=lambda token: reverse("download-file", args=[token]),
        renewal_url=reverse("downloads-renew", args=[checkpoint.pk]),
        meta=RequestMeta.from_request(request),
        record=record,
    )


@extend_schema_view(
    get=extend_schema(
        tags=["downloads"],
        operation_id="checkpoints_list",
        summary="Checkpoints I may download now (ready, and my access to the release is active)",
        responses={200: CheckpointSerializer(many=True), **errors(401)},
    )
)
class CheckpointList(generics.ListAPIView):
    serializer_class = CheckpointSerializer
    pagination_class = Pagination

    def get_queryset(self) -> Any:
        return selectors.downloadable_checkpoints(user=self.request.user)


@extend_schema_view(
    get=extend_schema(
        tags=["downloads"],
        operation_id="checkpoints_retrieve",
        summary="One checkpoint I may download, with its files",
        responses={200: CheckpointDetailSerializer, **errors(401, 403, 404)},
    )
)
class CheckpointDetail(APIView):
    def get(self, request: Request, checkpoint_id: int) -> Response:
        checkpoint, _ = selectors.access_downloadable_checkpoint(actor=request.user, checkpoint_id=checkpoint_id)
        checkpoint = Checkpoint.objects.prefetch_related("files").select_related("release").get(pk=checkpoint.pk)
        return Response(CheckpointDetailSerializer(checkpoint).data)


@extend_schema_view(
    post=extend_schema(
        tags=["downloads"],
        operation_id="checkpoints_links_issue",
        summary="Issue fresh signed links to every file (the bundle manifest); also the one-click renewal",
        request=None,
        responses={200: ManifestSerializer, **errors(401, 403, 404)},
    )
)
class CheckpointLinks(APIView):
    def post(self, request: Request, checkpoint_id: int) -> Response:
        return Response(_bundle(request, checkpoint_id, record=True).manifest())


@extend_schema_view(
    get=extend_schema(
        tags=["downloads"],
        operation_id="checkpoints_bundle_manifest",
        summary="The bundle manifest: files, sizes, sums, signed links, expiry and renewal URL",
        responses={200: ManifestSerializer, **errors(401, 403, 404)},
    )
)
class BundleManifest(APIView):
    def get(self, request: Request, checkpoint_id: int) -> Response:
        return Response(_bundle(request, checkpoint_id, record=True).manifest())


_TEXT_RESPONSES = {(200, "text/plain"): OpenApiResponse(OpenApiTypes.STR), **errors(401, 403, 404)}


class _TextBundle(APIView):
    renderer_classes = [renderers.JSONRenderer, TextRenderer]
    filename = ""
    record = False

    def text(self, bundle: Bundle) -> str:
        raise NotImplementedError

    def get(self, request: Request, checkpoint_id: int) -> HttpResponse:
        body = self.text(_bundle(request, checkpoint_id, record=self.record))
        response = HttpResponse(body, content_type="text/plain; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{self.filename}"'
        return response


@extend_schema_view(
    get=extend_schema(
        tags=["downloads"],
        operation_id="checkpoints_bundle_sha256sums",
        summary="SHA256SUMS, checkable with `sha256sum -c`",
        responses=_TEXT_RESPONSES,
    )
)
class BundleSha256Sums(_TextBundle):
    filename = "SHA256SUMS"

    def text(self, bundle: Bundle) -> str:
        return bundle.sha256sums()


@extend_schema_view(
    get=extend_schema(
        tags=["downloads"],
        operation_id="checkpoints_bundle_md5sums",
        summary="MD5SUMS (`md5sum -c`)",
        responses=_TEXT_RESPONSES,
    )
)
class BundleMd5Sums(_TextBundle):
    filename = "MD5SUMS"

    def text(self, bundle: Bundle) -> str:
        return bundle.md5sums()


@extend_schema_view(
    get=extend_schema(
        tags=["downloads"],
        operation_id="checkpoints_bundle_download_script",
        summary="download.sh: parallel, resuming, checksum-verifying bash + curl script with fresh links",
        responses=_TEXT_RESPONSES,
    )
)
class BundleScript(_TextBundle):
    filename = "download.sh"
    record = True

    def text(self, bundle: Bundle) -> str:
        return bundle.download_script()


# --- Reshard jobs (operators and reviewers; everyone else gets 404) ----------------------------


@extend_schema_view(
    get=extend_schema(
        tags=["reshard"],
        operation_id="checkpoints_reshard_jobs_list",
        summary="Reshard jobs of a checkpoint, newest first (operators and reviewers)",
        responses={200: ReshardJobSerializer(many=True), **errors(401, 403, 404)},
    ),
    post=extend_schema(
        tags=["reshard"],
        operation_id="checkpoints_reshard_jobs_create",
        summary="Convert a ready checkpoint: queue a reshard job; the same conversion asked again returns its job",
        request=ReshardJobCreateSerializer,
        responses={
            201: ReshardJobSerializer,
            200: OpenApiResponse(
                ReshardJobSerializer,
                description=(
                    "The same conversion (source, format, tp, dtype) is already queued, running or done; that job."
                ),
            ),
            **errors(400, 401, 403, 404, 409),
        },
    ),
)
class CheckpointReshardJobs(generics.GenericAPIView):
    serializer_class = ReshardJobSerializer
    pagination_class = Pagination

    def get(self, request: Request, checkpoint_id: int) -> Response:
        checkpoint = selectors.access_operator_checkpoint(actor=request.user, checkpoint_id=checkpoint_id)
        page = self.paginate_queryset(selectors.checkpoint_reshard_jobs(checkpoint))
        return self.get_paginated_response(ReshardJobSerializer(page, many=True).data)

    def post(self, request: Request, checkpoint_id: int) -> Response:
        checkpoint = selectors.access_operator_checkpoint(actor=request.user, checkpoint_id=checkpoint_id)
        data = validated(ReshardJobCreateSerializer, request.data)
        outcome = reshard.reshard_job_create(
            checkpoint=checkpoint,
            to=data["to"],
            tp=data.get("tp"),
            dtype=data.get("dtype") or None,
            actor=request.user,
            meta=RequestMeta.from_request(request),
        )
        return Response(ReshardJobSerializer(outcome.job).data, status=201 if outcome.created else 200)


@extend_schema_view(
    get=extend_schema(
        tags=["reshard"],
        operation_id="reshard_jobs_retrieve",
        summary="One reshard job: status, progress, error and output checkpoint (operators and reviewers)",
        responses={200: ReshardJobSerializer, **errors(401, 403, 404)},
    )
)
class ReshardJobDetail(APIView):
    def get(self, request: Request, job_id: int) -> Response:
        return Response(ReshardJobSerializer(selectors.access_reshard_job(actor=request.user, job_id=job_id)).data)


@extend_schema_view(
    post=extend_schema(
        tags=["reshard"],
        operation_id="reshard_jobs_cancel",
        summary="Cancel a reshard job: a queued one at once, a running one at its next heartbeat (it then "
        "removes what it stored)",
        request=None,
        responses={200: ReshardJobSerializer, **errors(401, 403, 404, 409)},
    )
)
class ReshardJobCancel(APIView):
    def post(self, request: Request, job_id: int) -> Response:
        job = selectors.access_reshard_job(actor=request.user, job_id=job_id)
        job = reshard.reshard_job_cancel(job=job, actor=request.user, meta=RequestMeta.from_request(request))
        return Response(ReshardJobSerializer(job).data)

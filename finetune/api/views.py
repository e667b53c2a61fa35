"""API of fine-tuning jobs: submit, list, read, cancel, and the logbook; datasets: upload (multipart),
list, read."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import generics
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from access.api.common import Pagination, errors, validated
from access.errors import InvalidInput
from access.services.audit import RequestMeta
from artifacts.selectors import access_downloadable_checkpoint
from finetune import selectors, services
from finetune.api.serializers import (
    CancelSerializer,
    DatasetUploadSerializer,
    LogbookSerializer,
    TrainingDatasetSerializer,
    TrainingJobCreateSerializer,
    TrainingJobSerializer,
    finite,
)


@extend_schema_view(
    get=extend_schema(
        tags=["fine-tuning"],
        operation_id="training_jobs_list",
        summary="My fine-tuning jobs, newest first",
        responses={200: TrainingJobSerializer(many=True), **errors(401)},
    ),
    post=extend_schema(
        tags=["fine-tuning"],
        operation_id="training_jobs_create",
        summary="Submit a fine-tuning job of a checkpoint of a release I may use, on a ready dataset of mine",
        request=TrainingJobCreateSerializer,
        responses={201: TrainingJobSerializer, **errors(400, 401, 403)},
    ),
)
class TrainingJobList(generics.GenericAPIView):
    serializer_class = TrainingJobSerializer
    pagination_class = Pagination

    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.user_training_jobs(user=request.user))
        return self.get_paginated_response(TrainingJobSerializer(page, many=True).data)

    def post(self, request: Request) -> Response:
        data = validated(TrainingJobCreateSerializer, request.data)
        checkpoint, _ = access_downloadable_checkpoint(actor=request.user, checkpoint_id=data["checkpoint"])
        dataset = selectors.user_datasets(user=request.user).filter(pk=data["dataset"]).first()
        if dataset is None:
            raise InvalidInput("No such dataset of yours; upload one first.", field="dataset")
        job = services.training_job_submit(
            owner=request.user,
            checkpoint=checkpoint,
            dataset=dataset,
            hyperparameters=data["hyperparameters"],
            tp=data["tp"],
            gpus=data["gpus"],
            max_hours=data["max_hours"],
            meta=RequestMeta.from_request(request),
        )
        return Response(TrainingJobSerializer(job).data, status=201)


@extend_schema_view(
    get=extend_schema(
        tags=["fine-tuning"],
        operation_id="training_jobs_retrieve",
        summary="One fine-tuning job: status, step, loss, result (mine; operators see every job)",
        responses={200: TrainingJobSerializer, **errors(401, 404)},
    )
)
class TrainingJobDetail(APIView):
    def get(self, request: Request, job_id: int) -> Response:
        job = selectors.access_training_job(actor=request.user, job_id=job_id, operators=True)
        return Response(finite(TrainingJobSerializer(job).data))


@extend_schema_view(
    post=extend_schema(
        tags=["fine-tuning"],
        operation_id="training_jobs_cancel",
        summary="Cancel a fine-tuning job: a queued one at once, a running one at its next heartbeat",
        request=CancelSerializer,
        responses={200: TrainingJobSerializer, **errors(401, 404, 409)},
    )
)
class TrainingJobCancel(APIView):
    def post(self, request: Request, job_id: int) -> Response:
        job = selectors.access_training_job(actor=request.user, job_id=job_id, operators=True)
        data = validated(CancelSerializer, request.data)
        job = services.training_job_cancel(
            job=job, actor=request.user, reason=data["reason"], meta=RequestMeta.from_request(request)
        )
        return Response(finite(TrainingJobSerializer(job).data))


@extend_schema_view(
    get=extend_schema(
        tags=["fine-tuning"],
        operation_id="training_jobs_logbook",
        summary="The job's logbook: every event of the run (start, step, checkpoint, resume, spike, rollback, "
        "operator, export, done, error), oldest first",
        responses={200: LogbookSerializer, **errors(401, 404)},
    )
)
class TrainingJobLogbook(APIView):
    def get(self, request: Request, job_id: int) -> Response:
        job = selectors.access_training_job(actor=request.user, job_id=job_id, operators=True)
        events = selectors.job_logbook(job)
        return Response({"count": len(events), "events": finite(events)})


@extend_schema_view(
    get=extend_schema(
        tags=["fine-tuning"],
        operation_id="training_datasets_list",
        summary="My datasets",
        responses={200: TrainingDatasetSerializer(many=True), **errors(401)},
    ),
    post=extend_schema(
        tags=["fine-tuning"],
        operation_id="training_datasets_create",
        summary="Upload a dataset (multipart); it is checked and tokenized with the checkpoint's tokenizer",
        request={"multipart/form-data": DatasetUploadSerializer},
        responses={201: TrainingDatasetSerializer, **errors(400, 401, 403)},
    ),
)
class DatasetList(generics.GenericAPIView):
    serializer_class = TrainingDatasetSerializer
    pagination_class = Pagination
    parser_classes = [MultiPartParser]

    def get(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.user_datasets(user=request.user))
        return self.get_paginated_response(TrainingDatasetSerializer(page, many=True).data)

    def post(self, request: Request) -> Response:
        data: dict[str, Any] = validated(DatasetUploadSerializer, request.data)
        checkpoint, _ = access_downloadable_checkpoint(actor=request.user, checkpoint_id=data["checkpoint"])
        dataset = services.dataset_upload(
            owner=request.user,
            checkpoint=checkpoint,
            upload=data["file"],
            name=data.get("name", ""),
            meta=RequestMeta.from_request(request),
        )
        return Response(TrainingDatasetSerializer(dataset).data, status=201)


@extend_schema_view(
    get=extend_schema(
        tags=["fine-tuning"],
        operation_id="training_datasets_retrieve",
        summary="One dataset of mine: state, progress, tokens, and the refused line",
        responses={200: TrainingDatasetSerializer, **errors(401, 404)},
    )
)
class DatasetDetail(APIView):
    def get(self, request: Request, dataset_id: int) -> Response:
        return Response(
            TrainingDatasetSerializer(selectors.access_dataset(actor=request.user, dataset_id=dataset_id)).data
        )

"""The reviewers' API: the queue with the dashboard's filters, decisions, notes, bulk and metrics."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view, inline_serializer
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from access import selectors
from access.api.common import IsReviewer, Pagination, errors, validated
from access.api.serializers import (
    ApproveInputSerializer,
    BulkInputSerializer,
    BulkResultSerializer,
    GrantSerializer,
    MetricsSerializer,
    NoteInputSerializer,
    NoteSerializer,
    QueueItemSerializer,
    QueueQuerySerializer,
    RejectInputSerializer,
    RequestInfoInputSerializer,
    ReviewApplicationSerializer,
    StartReviewInputSerializer,
)
from access.models import Application
from access.services.audit import RequestMeta
from access.services.reviews import (
    application_add_note,
    application_approve,
    application_reject,
    application_request_info,
    application_start_review,
    applications_bulk_decide,
)

TAGS = ["review"]


class ReviewView(APIView):
    permission_classes = (IsReviewer,)

    def application(self, application_id: int) -> Application:
        return selectors.access_application(actor=self.request.user, application_id=application_id)


def review_data(application: Application) -> dict[str, Any]:
    signals = selectors.application_signals(application)
    return ReviewApplicationSerializer(application, context={"signals": signals}).data


@extend_schema_view(
    get=extend_schema(
        tags=TAGS,
        operation_id="review_applications_list",
        summary="The review queue, oldest first",
        parameters=[QueueQuerySerializer],
        responses={200: QueueItemSerializer(many=True), **errors(400, 401, 403)},
    )
)
class ReviewQueue(generics.ListAPIView):
    permission_classes = (IsReviewer,)
    serializer_class = QueueItemSerializer
    pagination_class = Pagination

    def get_queryset(self) -> QuerySet[Application]:
        query = validated(QueueQuerySerializer, self.request.query_params)
        filters = selectors.QueueFilters(
            status=sorted(query["status"]) if query.get("status") else None,
            release=query.get("release") or None,
            organization_type=query.get("organization_type") or None,
            country=query.get("country") or None,
            submitted_from=query.get("submitted_from"),
            submitted_to=query.get("submitted_to"),
            search=query.get("search", ""),
        )
        return selectors.review_queue(filters).select_related("reviewer")


class ReviewDetail(ReviewView):
    @extend_schema(
        tags=TAGS,
        operation_id="review_applications_retrieve",
        summary="An application with its thread, internal notes and risk signals",
        responses={200: ReviewApplicationSerializer, **errors(401, 403, 404)},
    )
    def get(self, request: Request, application_id: int) -> Response:
        return Response(review_data(self.application(application_id)))


class ReviewStart(ReviewView):
    @extend_schema(
        tags=TAGS,
        operation_id="review_applications_start_review",
        summary="Take a submitted application",
        request=StartReviewInputSerializer,
        responses={200: ReviewApplicationSerializer, **errors(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, application_id: int) -> Response:
        application = self.application(application_id)
        data = validated(StartReviewInputSerializer, request.data)
        application = application_start_review(
            application=application,
            reviewer=request.user,
            meta=RequestMeta.from_request(request),
            expected_version=data.get("expected_version"),
        )
        return Response(review_data(application))


class ReviewApprove(ReviewView):
    @extend_schema(
        tags=TAGS,
        operation_id="review_applications_approve",
        summary="Approve and grant access",
        request=ApproveInputSerializer,
        responses={
            200: inline_serializer(
                "ApprovalResult", {"application": ReviewApplicationSerializer(), "grant": GrantSerializer()}
            ),
            **errors(400, 401, 403, 404, 409),
        },
    )
    def post(self, request: Request, application_id: int) -> Response:
        application = self.application(application_id)
        data = validated(ApproveInputSerializer, request.data)
        grant = application_approve(
            application=application,
            reviewer=request.user,
            meta=RequestMeta.from_request(request),
            expires_at=data.get("expires_at"),
            expected_version=data.get("expected_version"),
        )
        application.refresh_from_db()
        return Response({"application": review_data(application), "grant": GrantSerializer(grant).data})


class ReviewReject(ReviewView):
    @extend_schema(
        tags=TAGS,
        operation_id="review_applications_reject",
        summary="Decline, with a reason for the applicant",
        request=RejectInputSerializer,
        responses={200: ReviewApplicationSerializer, **errors(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, application_id: int) -> Response:
        application = self.application(application_id)
        data = validated(RejectInputSerializer, request.data)
        application = application_reject(
            application=application,
            reviewer=request.user,
            reason=data["reason"],
            meta=RequestMeta.from_request(request),
            expected_version=data.get("expected_version"),
        )
        return Response(review_data(application))


class ReviewRequestInfo(ReviewView):
    @extend_schema(
        tags=TAGS,
        operation_id="review_applications_request_info",
        summary="Ask the applicant a question",
        request=RequestInfoInputSerializer,
        responses={200: ReviewApplicationSerializer, **errors(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, application_id: int) -> Response:
        application = self.application(application_id)
        data = validated(RequestInfoInputSerializer, request.data)
        application = application_request_info(
            application=application,
            reviewer=request.user,
            message=data["message"],
            meta=RequestMeta.from_request(request),
            expected_version=data.get("expected_version"),
        )
        return Response(review_data(application))


class ReviewNotes(ReviewView):
    @extend_schema(
        tags=TAGS,
        operation_id="review_applications_notes_create",
        summary="Add an internal note",
        request=NoteInputSerializer,
        responses={201: NoteSerializer, **errors(400, 401, 403, 404)},
    )
    def post(self, request: Request, application_id: int) -> Response:
        application = self.application(application_id)
        data = validated(NoteInputSerializer, request.data)
        note = application_add_note(
            application=application,
            reviewer=request.user,
            body=data["body"],
            meta=RequestMeta.from_request(request),
        )
        return Response(NoteSerializer(note).data, status=status.HTTP_201_CREATED)


class ReviewBulk(ReviewView):
    @extend_schema(
        tags=TAGS,
        operation_id="review_bulk_decide",
        summary="Approve or reject many; each that cannot be decided is listed in `conflicts`",
        request=BulkInputSerializer,
        responses={200: BulkResultSerializer, **errors(400, 401, 403)},
    )
    def post(self, request: Request) -> Response:
        data = validated(BulkInputSerializer, request.data)
        result = applications_bulk_decide(
            application_ids=list(dict.fromkeys(data["ids"])),
            reviewer=request.user,
            decision=data["decision"],
            reason=data["reason"],
            meta=RequestMeta.from_request(request),
        )
        payload = {"decided": result.decided, "conflicts": {str(pk): why for pk, why in result.conflicts.items()}}
        return Response(BulkResultSerializer(payload).data)


class ReviewMetrics(ReviewView):
    @extend_schema(
        tags=TAGS,
        operation_id="review_metrics_retrieve",
        summary="Pending count, decision times (median, p90, last 30 days) and weekly decisions",
        responses={200: MetricsSerializer, **errors(401, 403)},
    )
    def get(self, request: Request) -> Response:
        metrics = selectors.review_metrics()
        payload = {
            "pending": metrics.pending,
            "decided_30d": metrics.decided_30d,
            "median_hours_30d": metrics.median_hours_30d,
            "p90_hours_30d": metrics.p90_hours_30d,
            "weekly": [{"week_start": week, "decisions": count} for week, count in metrics.weekly],
        }
        return Response(MetricsSerializer(payload).data)

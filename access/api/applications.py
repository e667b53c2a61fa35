"""The applicant's side: apply, follow, answer questions, withdraw. Only ever one's own applications."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from access import selectors
from access.api.common import Pagination, errors, validated
from access.api.serializers import (
    AnswerInputSerializer,
    ApplicationCreateSerializer,
    ApplicationListQuerySerializer,
    ApplicationSerializer,
    MessageSerializer,
)
from access.models import Application
from access.services.applications import ApplicationInput, application_answer, application_submit, application_withdraw
from access.services.audit import RequestMeta

TAGS = ["applications"]


@extend_schema_view(
    get=extend_schema(
        tags=TAGS,
        operation_id="applications_list",
        summary="My applications, newest first",
        parameters=[ApplicationListQuerySerializer],
        responses={200: ApplicationSerializer(many=True), **errors(400, 401)},
    ),
    post=extend_schema(
        tags=TAGS,
        operation_id="applications_create",
        summary="Apply for a gated release",
        request=ApplicationCreateSerializer,
        responses={201: ApplicationSerializer, **errors(400, 401, 403, 409)},
    ),
)
class ApplicationListCreate(generics.ListCreateAPIView):
    serializer_class = ApplicationSerializer
    pagination_class = Pagination

    def get_queryset(self) -> QuerySet[Application]:
        query = validated(ApplicationListQuerySerializer, self.request.query_params)
        queryset = selectors.user_applications(user=self.request.user).select_related(
            "license_acceptance__license_version"
        )
        if query.get("status"):
            queryset = queryset.filter(status=query["status"])
        return queryset

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = validated(ApplicationCreateSerializer, request.data)
        try:
            release = selectors.release_by_slug(data.pop("release"))
        except Http404:
            raise serializers.ValidationError(
                {"release": ["No listed release has this slug; see /api/v1/releases/ for the slugs."]}
            ) from None
        application = application_submit(
            applicant=request.user,
            release=release,
            data=ApplicationInput(**data),
            meta=RequestMeta.from_request(request),
        )
        return Response(ApplicationSerializer(application).data, status=status.HTTP_201_CREATED)


class ApplicationDetail(APIView):
    @extend_schema(
        tags=TAGS,
        operation_id="applications_retrieve",
        summary="One of my applications",
        responses={200: ApplicationSerializer, **errors(401, 404)},
    )
    def get(self, request: Request, application_id: int) -> Response:
        application = selectors.access_own_application(actor=request.user, application_id=application_id)
        return Response(ApplicationSerializer(application).data)


class ApplicationMessages(APIView):
    @extend_schema(
        tags=TAGS,
        operation_id="applications_messages_list",
        summary="The thread with the reviewers (questions and answers, oldest first)",
        responses={200: MessageSerializer(many=True), **errors(401, 404)},
    )
    def get(self, request: Request, application_id: int) -> Response:
        application = selectors.access_own_application(actor=request.user, application_id=application_id)
        # Only the shared thread: internal reviewer notes live elsewhere and never reach applicants.
        messages = application.messages.select_related("author")
        return Response(MessageSerializer(messages, many=True).data)


class ApplicationAnswer(APIView):
    @extend_schema(
        tags=TAGS,
        operation_id="applications_answer",
        summary="Answer the reviewer's question (the application must be in needs_info)",
        request=AnswerInputSerializer,
        responses={200: ApplicationSerializer, **errors(400, 401, 404, 409)},
    )
    def post(self, request: Request, application_id: int) -> Response:
        application = selectors.access_own_application(actor=request.user, application_id=application_id)
        data = validated(AnswerInputSerializer, request.data)
        application = application_answer(
            application=application,
            applicant=request.user,
            message=data["message"],
            meta=RequestMeta.from_request(request),
        )
        return Response(ApplicationSerializer(application).data)


class ApplicationWithdraw(APIView):
    @extend_schema(
        tags=TAGS,
        operation_id="applications_withdraw",
        summary="Withdraw an open application",
        request=None,
        responses={200: ApplicationSerializer, **errors(401, 404, 409)},
    )
    def post(self, request: Request, application_id: int) -> Response:
        application = application_withdraw(
            application=selectors.access_own_application(actor=request.user, application_id=application_id),
            applicant=request.user,
            meta=RequestMeta.from_request(request),
        )
        return Response(ApplicationSerializer(application).data)

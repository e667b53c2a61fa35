"""/api/v1/… Every route here must appear in tests/access/test_api_authz.py's matrix."""

from __future__ import annotations

from django.urls import path

from access.api import account, applications, catalog, review

app_name = "api"  # reverse("api:releases"): no clash with the pages' names

urlpatterns = [
    # Catalog
    path("releases/", catalog.ReleaseList.as_view(), name="releases"),
    path("releases/<slug:slug>/", catalog.ReleaseDetail.as_view(), name="release"),
    path("releases/<slug:slug>/license/", catalog.ReleaseLicense.as_view(), name="release-license"),
    path("releases/<slug:slug>/license/accept/", catalog.ReleaseLicenseAccept.as_view(), name="release-license-accept"),
    path("releases/<slug:slug>/access/", catalog.ReleaseAccess.as_view(), name="release-access"),
    path("families/", catalog.FamilyList.as_view(), name="families"),
    # Applicant
    path("applications/", applications.ApplicationListCreate.as_view(), name="applications"),
    path("applications/<int:application_id>/", applications.ApplicationDetail.as_view(), name="application"),
    path(
        "applications/<int:application_id>/messages/",
        applications.ApplicationMessages.as_view(),
        name="application-messages",
    ),
    path(
        "applications/<int:application_id>/answer/", applications.ApplicationAnswer.as_view(), name="application-answer"
    ),
    path(
        "applications/<int:application_id>/withdraw/",
        applications.ApplicationWithdraw.as_view(),
        name="application-withdraw",
    ),
    # Review
    path("review/applications/", review.ReviewQueue.as_view(), name="review-queue"),
    path("review/applications/<int:application_id>/", review.ReviewDetail.as_view(), name="review-detail"),
    path("review/applications/<int:application_id>/start-review/", review.ReviewStart.as_view(), name="review-start"),
    path("review/applications/<int:application_id>/approve/", review.ReviewApprove.as_view(), name="review-approve"),
    path("review/applications/<int:application_id>/reject/", review.ReviewReject.as_view(), name="review-reject"),
    path(
        "review/applications/<int:application_id>/request-info/",
        review.ReviewRequestInfo.as_view(),
        name="review-request-info",
    ),
    path("review/applications/<int:application_id>/notes/", review.ReviewNotes.as_view(), name="review-notes"),
    path("review/bulk/", review.ReviewBulk.as_view(), name="review-bulk"),
    path("review/metrics/", review.ReviewMetrics.as_view(), name="review-metrics"),
    # Grants and keys
    path("grants/", account.GrantList.as_view(), name="grants"),
    path("api-keys/", account.ApiKeyListCreate.as_view(), name="api-keys"),
    path("api-keys/<int:key_id>/revoke/", account.ApiKeyRevoke.as_view(), name="api-key-revoke"),
]

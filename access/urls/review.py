from __future__ import annotations

from django.urls import path

from access.views import review as views

urlpatterns = [
    path("", views.queue, name="review-queue"),
    path("bulk/", views.bulk_decide, name="review-bulk"),
    path("audit.csv", views.audit_csv, name="review-audit-csv"),
    path("grants/", views.grants, name="review-grants"),
    path("grants/<int:grant_id>/revoke/", views.grant_revoke, name="review-grant-revoke"),
    path("<int:application_id>/", views.detail, name="review-detail"),
    path("<int:application_id>/start/", views.start_review, name="review-start"),
    path("<int:application_id>/approve/", views.approve, name="review-approve"),
    path("<int:application_id>/reject/", views.reject, name="review-reject"),
    path("<int:application_id>/request-info/", views.request_info, name="review-request-info"),
    path("<int:application_id>/note/", views.add_note, name="review-note"),
    path("<int:application_id>/audit.csv", views.application_audit_csv, name="review-application-audit-csv"),
]

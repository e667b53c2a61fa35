from __future__ import annotations

from django.urls import path

from access.views.review import audit, detail, grants, queue

urlpatterns = [
    path("", queue.queue, name="review-queue"),
    path("bulk/", queue.bulk_decide, name="review-bulk"),
    path("audit.csv", audit.audit_csv, name="review-audit-csv"),
    path("grants/", grants.grants, name="review-grants"),
    path("grants/<int:grant_id>/revoke/", grants.revoke, name="review-grant-revoke"),
    path("<int:application_id>/", detail.detail, name="review-detail"),
    path("<int:application_id>/start/", detail.start_review, name="review-start"),
    path("<int:application_id>/approve/", detail.approve, name="review-approve"),
    path("<int:application_id>/reject/", detail.reject, name="review-reject"),
    path("<int:application_id>/request-info/", detail.request_info, name="review-request-info"),
    path("<int:application_id>/note/", detail.add_note, name="review-note"),
    path("<int:application_id>/audit.csv", audit.application_audit_csv, name="review-application-audit-csv"),
]

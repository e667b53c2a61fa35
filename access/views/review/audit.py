"""The audit log as CSV: all of it (filtered), or one application's."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from access import selectors
from access.csv_export import AuditFilters, audit_events, stream_audit_csv
from access.views.review.common import reviewer_required
from access.views.review.forms import AuditCsvForm


def _csv_response(filters: AuditFilters, filename: str) -> StreamingHttpResponse:
    return StreamingHttpResponse(
        stream_audit_csv(audit_events(filters)),
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@reviewer_required
@require_GET
def audit_csv(request: HttpRequest) -> HttpResponse:
    form = AuditCsvForm(request.GET)
    if not form.is_valid():
        problems = "; ".join(f"{name}: {' '.join(errors)}" for name, errors in form.errors.items())
        return HttpResponseBadRequest(f"Fix the filters: {problems}", content_type="text/plain; charset=utf-8")
    data = form.cleaned_data
    filters = AuditFilters(
        application_id=data.get("application"),
        action=(data.get("action") or "").strip(),
        created_from=data.get("created_from"),
        created_to=data.get("created_to"),
    )
    return _csv_response(filters, f"audit-{timezone.localdate():%Y%m%d}.csv")


@reviewer_required
@require_GET
def application_audit_csv(request: HttpRequest, application_id: int) -> HttpResponse:
    application = selectors.access_application(actor=request.user, application_id=application_id)  # type: ignore[arg-type]
    return _csv_response(AuditFilters(application_id=application.pk), f"audit-application-{application.pk}.csv")

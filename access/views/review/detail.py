"""One application: everything a reviewer needs to decide, and one POST per decision."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from access import selectors
from access.csv_export import AuditFilters, audit_events
from access.errors import AccessError, Conflict, InvalidInput, NotAllowed
from access.models import Application, ApplicationStatus
from access.models.applications import PENDING_STATUSES
from access.services.audit import RequestMeta
from access.services.reviews import (
    application_add_note,
    application_approve,
    application_reject,
    application_request_info,
    application_start_review,
    rejection_template_render,
)
from access.views.review.common import reviewer_required
from access.views.review.forms import (
    ApproveForm,
    NoteForm,
    RejectForm,
    RequestInfoForm,
    StartReviewForm,
    active_templates,
)


def publication_link(publication: str) -> tuple[str, str]:
    """(text, URL): DOIs are stored as `doi:10.x/y` and link to the DOI resolver."""
    if publication.lower().startswith("doi:"):
        doi = publication[4:]
        return publication, f"https://doi.org/{doi}"
    return publication, publication


def _default_forms(application: Application) -> dict[str, forms.Form]:
    version = {"expected_version": application.version}
    default_expiry = timezone.localdate() + timedelta(days=settings.GRANT_DEFAULT_DAYS)
    return {
        "start_form": StartReviewForm(initial=version, auto_id="start_%s"),
        "approve_form": ApproveForm(initial={**version, "expires_on": default_expiry}, auto_id="approve_%s"),
        "reject_form": RejectForm(initial=version, auto_id="reject_%s"),
        "info_form": RequestInfoForm(initial=version, auto_id="info_%s"),
        "note_form": NoteForm(auto_id="note_%s"),
    }


def _render_detail(
    request: HttpRequest, application: Application, *, status: int = 200, **bound_forms: forms.Form
) -> HttpResponse:
    templates = list(active_templates())
    own = application.applicant_id == request.user.pk
    context: dict[str, Any] = {
        "application": application,
        "publications": [publication_link(p) for p in application.publications or []],
        "acceptance": application.license_acceptance,
        "history": selectors.applicant_history(application),
        "signals": selectors.application_signals(application),
        "thread": application.messages.select_related("author").order_by("created_at", "pk"),
        "notes": application.notes.select_related("author").order_by("created_at", "pk"),
        "audit": audit_events(AuditFilters(application_id=application.pk)),
        "grants": application.grants.select_related("release", "revoked_by").order_by("-starts_at"),
        "rendered_templates": {
            str(template.pk): rejection_template_render(template=template, application=application)
            for template in templates
        },
        # Nobody takes or decides their own application (the services refuse it too).
        "own_application": own,
        "can_start": not own and application.status == ApplicationStatus.SUBMITTED,
        "can_decide": not own and application.status in PENDING_STATUSES,
        "here": reverse("review-detail", args=[application.pk]),
        **_default_forms(application),
        **bound_forms,
    }
    return render(request, "access/review/detail.html", context, status=status)


@reviewer_required
@require_GET
def detail(request: HttpRequest, application_id: int) -> HttpResponse:
    application = selectors.access_application(actor=request.user, application_id=application_id)  # type: ignore[arg-type]
    return _render_detail(request, application)


def _service_field(form: forms.Form, exc: AccessError, renames: dict[str, str] | None = None) -> str | None:
    field = (renames or {}).get(exc.field or "", exc.field)
    return field if field in form.fields else None


def _act(
    request: HttpRequest,
    application_id: int,
    *,
    form_class: type[forms.Form],
    form_name: str,
    auto_id: str,
    call: Callable[[Application, Any], str],
    renames: dict[str, str] | None = None,
) -> HttpResponse:
    """Validate one action form, call its service, and come back to the detail page.

    Invalid input re-renders the page with the typed values and the error at the field (400);
    a Conflict leaves the application as it was and says who changed it first.
    """
    application = selectors.access_application(actor=request.user, application_id=application_id)  # type: ignore[arg-type]
    form = form_class(request.POST, auto_id=auto_id)
    if not form.is_valid():
        return _render_detail(request, application, status=400, **{form_name: form})
    try:
        done = call(application, form)
    except Conflict as exc:
        messages.error(request, exc.message)
    except InvalidInput as exc:
        form.add_error(_service_field(form, exc, renames), exc.message)
        return _render_detail(request, application, status=400, **{form_name: form})
    except NotAllowed as exc:
        raise PermissionDenied(exc.message) from None
    else:
        messages.success(request, done)
    return redirect("review-detail", application.pk)


@reviewer_required
@require_POST
def start_review(request: HttpRequest, application_id: int) -> HttpResponse:
    def call(application: Application, form: StartReviewForm) -> str:
        application_start_review(
            application=application,
            reviewer=request.user,  # type: ignore[arg-type]
            meta=RequestMeta.from_request(request),
            expected_version=form.cleaned_data["expected_version"],
        )
        return f"You are reviewing application #{application.pk}."

    return _act(
        request, application_id, form_class=StartReviewForm, form_name="start_form", auto_id="start_%s", call=call
    )


@reviewer_required
@require_POST
def approve(request: HttpRequest, application_id: int) -> HttpResponse:
    def call(application: Application, form: ApproveForm) -> str:
        grant = application_approve(
            application=application,
            reviewer=request.user,  # type: ignore[arg-type]
            meta=RequestMeta.from_request(request),
            expires_at=form.expires_at(),
            expected_version=form.cleaned_data["expected_version"],
        )
        return f"Application #{application.pk} approved; access until {grant.expires_at:%Y-%m-%d}."

    return _act(
        request,
        application_id,
        form_class=ApproveForm,
        form_name="approve_form",
        auto_id="approve_%s",
        call=call,
        renames={"expires_at": "expires_on"},
    )


@reviewer_required
@require_POST
def reject(request: HttpRequest, application_id: int) -> HttpResponse:
    def call(application: Application, form: RejectForm) -> str:
        application_reject(
            application=application,
            reviewer=request.user,  # type: ignore[arg-type]
            reason=form.reason_for(application),
            meta=RequestMeta.from_request(request),
            expected_version=form.cleaned_data["expected_version"],
        )
        return f"Application #{application.pk} rejected; the applicant was told the reason."

    return _act(request, application_id, form_class=RejectForm, form_name="reject_form", auto_id="reject_%s", call=call)


@reviewer_required
@require_POST
def request_info(request: HttpRequest, application_id: int) -> HttpResponse:
    def call(application: Application, form: RequestInfoForm) -> str:
        application_request_info(
            application=application,
            reviewer=request.user,  # type: ignore[arg-type]
            message=form.cleaned_data["message"],
            meta=RequestMeta.from_request(request),
            expected_version=form.cleaned_data["expected_version"],
        )
        return f"Question sent; application #{application.pk} waits for the applicant's answer."

    return _act(
        request, application_id, form_class=RequestInfoForm, form_name="info_form", auto_id="info_%s", call=call
    )


@reviewer_required
@require_POST
def add_note(request: HttpRequest, application_id: int) -> HttpResponse:
    def call(application: Application, form: NoteForm) -> str:
        application_add_note(
            application=application,
            reviewer=request.user,  # type: ignore[arg-type]
            body=form.cleaned_data["body"],
            meta=RequestMeta.from_request(request),
        )
        return "Note added."

    return _act(request, application_id, form_class=NoteForm, form_name="note_form", auto_id="note_%s", call=call)

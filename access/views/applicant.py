"""What an applicant sees: their applications and grants, one application's status, renewals, notifications.

Reviewer notes are never read here: the thread is `ApplicationMessage` only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from access import selectors, services
from access.errors import AccessError, InvalidInput
from access.forms import AnswerForm, RenewalForm, WithdrawForm, apply_service_error
from access.models import Application, ApplicationStatus, Grant, GrantStatus
from access.models.applications import OPEN_STATUSES, PENDING_STATUSES

NOTIFICATIONS_PER_PAGE = 50

_EXPLANATIONS = {
    ApplicationStatus.SUBMITTED: "Your application is in the queue. A reviewer will pick it up; "
    "we email you when anything changes.",
    ApplicationStatus.IN_REVIEW: "A reviewer is looking at your application.",
    ApplicationStatus.NEEDS_INFO: "A reviewer needs more information. Answer the question below; "
    "your application then goes back to the reviewer.",
    ApplicationStatus.APPROVED: "Your application is approved.",
    ApplicationStatus.REJECTED: "Your application was declined.",
    ApplicationStatus.WITHDRAWN: "You withdrew this application. Apply again from the model's page if you still need access.",
}


@login_required
def my_applications(request: HttpRequest) -> HttpResponse:
    grants = list(selectors.user_grants(user=request.user))
    return render(
        request,
        "access/applicant/my_applications.html",
        {
            "applications": selectors.user_applications(user=request.user),
            "grants": [{"grant": g, "renewable": selectors.grant_renewable(g)} for g in grants],
        },
    )


def _application_grant(application: Application) -> Grant | None:
    """The grant an approved application made, or the grant it renewed."""
    if application.status != ApplicationStatus.APPROVED:
        return None
    return application.renewal_of or application.grants.order_by("-expires_at").first()


def _detail_context(request: HttpRequest, application: Application, **forms: Any) -> dict[str, Any]:
    is_applicant = application.applicant_id == request.user.pk
    reapply_from = None
    if application.status == ApplicationStatus.REJECTED and application.decided_at:
        reapply_from = application.decided_at + timedelta(days=settings.REAPPLY_COOLDOWN_DAYS)
    return {
        "application": application,
        "is_applicant": is_applicant,
        "explanation": _EXPLANATIONS.get(application.status, ""),
        "grant": _application_grant(application),
        "reapply_from": reapply_from,
        "reapply_now": reapply_from is not None and reapply_from <= timezone.now(),
        "thread": application.messages.select_related("author"),
        "is_open": application.status in OPEN_STATUSES,
        "answer_form": forms.get("answer_form") or AnswerForm(),
        "withdraw_form": forms.get("withdraw_form") or WithdrawForm(),
        "can_answer": is_applicant and application.status == ApplicationStatus.NEEDS_INFO,
        "can_withdraw": is_applicant and application.status in OPEN_STATUSES,
        "publications": [
            {"text": p, "href": f"https://doi.org/{p[4:]}" if p.startswith("doi:") else p}
            for p in application.publications or []
        ],
    }


@login_required
def application_detail(request: HttpRequest, application_id: int) -> HttpResponse:
    application = selectors.access_application(actor=request.user, application_id=application_id)
    return render(request, "access/applicant/application_detail.html", _detail_context(request, application))


def _own_application(request: HttpRequest, application_id: int) -> Application:
    application = selectors.access_application(actor=request.user, application_id=application_id)
    if application.applicant_id != request.user.pk:
        # Reviewers may read the page, but only the applicant answers or withdraws.
        raise Http404("No such application.")
    return application


@login_required
@require_POST
def application_answer(request: HttpRequest, application_id: int) -> HttpResponse:
    application = _own_application(request, application_id)
    form = AnswerForm(request.POST)
    status = 400
    if form.is_valid():
        try:
            services.application_answer(
                application=application,
                applicant=request.user,
                message=form.cleaned_data["message"],
                meta=services.RequestMeta.from_request(request),
            )
        except AccessError as exc:
            status = exc.http_status
            apply_service_error(form, exc)
        else:
            messages.success(request, "Your answer is sent; the application is back with the reviewer.")
            return redirect("application-detail", application_id=application.pk)
    application.refresh_from_db()
    return render(
        request,
        "access/applicant/application_detail.html",
        _detail_context(request, application, answer_form=form),
        status=status,
    )


@login_required
@require_POST
def application_withdraw(request: HttpRequest, application_id: int) -> HttpResponse:
    application = _own_application(request, application_id)
    form = WithdrawForm(request.POST)
    status = 400
    if form.is_valid():
        try:
            services.application_withdraw(
                application=application, applicant=request.user, meta=services.RequestMeta.from_request(request)
            )
        except AccessError as exc:
            status = exc.http_status
            apply_service_error(form, exc)
        else:
            messages.success(request, f"Application #{application.pk} is withdrawn.")
            return redirect("application-detail", application_id=application.pk)
    application.refresh_from_db()
    return render(
        request,
        "access/applicant/application_detail.html",
        _detail_context(request, application, withdraw_form=form),
        status=status,
    )


def _renewal_blocker(grant: Grant) -> dict[str, Any] | None:
    """Why the grant cannot be renewed now, in words; None when it can."""
    if selectors.grant_renewable(grant):
        return None
    now = timezone.now()
    pending = grant.renewal_applications.filter(status__in=PENDING_STATUSES + (ApplicationStatus.NEEDS_INFO,)).first()
    if pending is not None:
        return {"message": f"Your renewal request #{pending.pk} is being reviewed.", "application": pending}
    if grant.status != GrantStatus.ACTIVE or grant.expires_at <= now:
        return {"message": "This grant is no longer active: apply again from the model's page instead of renewing."}
    if grant.application_id is None:
        return {"message": "This grant was made by an operator; ask them to extend it."}
    opens = grant.expires_at - timedelta(days=settings.GRANT_RENEWAL_WINDOW_DAYS)
    return {"message": f"Renewal opens {settings.GRANT_RENEWAL_WINDOW_DAYS} days before expiry, on {opens:%Y-%m-%d}."}


@login_required
@require_http_methods(["GET", "POST"])
def grant_renew(request: HttpRequest, grant_id: int) -> HttpResponse:
    grant = selectors.access_grant(actor=request.user, grant_id=grant_id)
    if grant.user_id != request.user.pk:
        raise Http404("No such grant.")
    current = grant.release.license.current_version
    label = f"{grant.release.license.name} version {current.version}" if current else grant.release.license.name
    form = RenewalForm(
        request.POST if request.method == "POST" else None,
        initial={"license_version_id": current.pk if current else None},
        license_label=label,
    )
    status = 200
    service_error = ""
    if request.method == "POST":
        status = 400
        if form.is_valid():
            try:
                application = services.grant_request_renewal(
                    grant=grant,
                    user=request.user,
                    meta=services.RequestMeta.from_request(request),
                    license_version_id=form.cleaned_data["license_version_id"],
                )
            except AccessError as exc:
                status = exc.http_status
                service_error = exc.message
                if isinstance(exc, InvalidInput) and getattr(exc, "errors", None):
                    # The copied application no longer passes today's rules: a fresh application is needed.
                    service_error = (
                        "Your last application does not meet the current requirements "
                        f"({exc.message}) Apply again from the model's page."
                    )
                form = RenewalForm(initial={"license_version_id": current.pk if current else None}, license_label=label)
            else:
                messages.success(
                    request,
                    f"Renewal request #{application.pk} for {grant.release.name} is submitted. "
                    "Your current access continues while it is reviewed.",
                )
                return redirect("application-detail", application_id=application.pk)
    return render(
        request,
        "access/applicant/grant_renew.html",
        {
            "grant": grant,
            "license_version": current,
            "form": form,
            "blocker": _renewal_blocker(grant),
            "service_error": service_error,
        },
        status=status,
    )


@login_required
def notifications(request: HttpRequest) -> HttpResponse:
    page = Paginator(request.user.notifications.order_by("-created_at", "-pk"), NOTIFICATIONS_PER_PAGE).get_page(
        request.GET.get("page")
    )
    shown = list(page.object_list)
    unread_ids = {n.pk for n in shown if n.read_at is None}
    if unread_ids:
        services.notifications_mark_read(user=request.user, ids=sorted(unread_ids))
    return render(
        request,
        "access/applicant/notifications.html",
        {
            "page": page,
            "items": [{"notification": n, "unread": n.pk in unread_ids} for n in shown],
        },
    )

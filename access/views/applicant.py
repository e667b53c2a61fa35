"""What an applicant sees: their applications and grants, one application's status, renewals, notifications.

Reviewer notes are never read here: the thread is `ApplicationMessage` only.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from access import selectors
from access.errors import AccessError, InvalidInput
from access.forms import AnswerForm, RenewalForm, WithdrawForm, apply_service_error
from access.models import Application, ApplicationStatus
from access.models.applications import OPEN_STATUSES
from access.services import applications as application_services
from access.services.audit import RequestMeta
from access.services.grants import grant_request_renewal
from access.services.notifications import notifications_mark_read

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


def _reapply(application: Application) -> dict[str, Any]:
    """For a declined application, whether its applicant may apply again: the apply page's and the API's
    rule (`selectors.apply_blocker`), so a newer application, a later refusal or a current grant counts."""
    if application.status != ApplicationStatus.REJECTED:
        return {}
    blocker = selectors.apply_blocker(user=application.applicant, release=application.release)
    if blocker is not None and blocker.code == "cooldown":
        return {"reapply_from": selectors.reapply_from(blocker.application)}
    return {"reapply_now": blocker is None, "reapply_blocker": blocker}


def _detail_context(request: HttpRequest, application: Application, **forms: Any) -> dict[str, Any]:
    is_applicant = application.applicant_id == request.user.pk
    return {
        "application": application,
        "is_applicant": is_applicant,
        "explanation": _EXPLANATIONS.get(application.status, ""),
        "grant": selectors.application_grant(application),
        **_reapply(application),
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


@login_required
@require_POST
def application_answer(request: HttpRequest, application_id: int) -> HttpResponse:
    # Reviewers may read the page, but only the applicant answers or withdraws.
    application = selectors.access_own_application(actor=request.user, application_id=application_id)
    form = AnswerForm(request.POST)
    status = 400
    if form.is_valid():
        try:
            application_services.application_answer(
                application=application,
                applicant=request.user,
                message=form.cleaned_data["message"],
                meta=RequestMeta.from_request(request),
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
    # Reviewers may read the page, but only the applicant answers or withdraws.
    application = selectors.access_own_application(actor=request.user, application_id=application_id)
    form = WithdrawForm(request.POST)
    status = 400
    if form.is_valid():
        try:
            application_services.application_withdraw(
                application=application, applicant=request.user, meta=RequestMeta.from_request(request)
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


@login_required
@require_http_methods(["GET", "POST"])
def grant_renew(request: HttpRequest, grant_id: int) -> HttpResponse:
    grant = selectors.access_own_grant(actor=request.user, grant_id=grant_id)
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
                application = grant_request_renewal(
                    grant=grant,
                    user=request.user,
                    meta=RequestMeta.from_request(request),
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
            "blocker": selectors.renewal_blocker(grant),
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
        notifications_mark_read(user=request.user, ids=sorted(unread_ids))
    return render(
        request,
        "access/applicant/notifications.html",
        {
            "page": page,
            "items": [{"notification": n, "unread": n.pk in unread_ids} for n in shown],
        },
    )

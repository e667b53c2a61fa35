"""Catalog pages: the index, a release's cards and access panel, its license, and the application form."""

from __future__ import annotations

from itertools import groupby
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from access import selectors
from access.errors import AccessError, Conflict
from access.forms import ApplicationForm, LicenseAcceptForm, apply_service_error
from access.models import Application, LicenseAcceptance, Release
from access.models.applications import OPEN_STATUSES
from access.services.applications import application_submit
from access.services.audit import RequestMeta
from access.services.licenses import license_accept


def _license_label(release: Release) -> str:
    current = release.license.current_version
    return f"{release.license.name} version {current.version}" if current else release.license.name


def _latest_applications(user: Any) -> dict[int, Application]:
    """The user's newest application per release (one query)."""
    if not user.is_authenticated:
        return {}
    latest: dict[int, Application] = {}
    for application in selectors.user_applications(user=user):  # newest first
        latest.setdefault(application.release_id, application)
    return latest


def _reapply_from(application: Application | None) -> Any:
    opens = selectors.reapply_from(application)
    return opens if opens is not None and opens > timezone.now() else None


def _access_state(user: Any, release: Release, latest: Application | None) -> dict[str, Any]:
    """What the access panel says: the selector's decision plus the application that explains it."""
    decision = selectors.release_access_check(user=user, release=release)
    open_application = latest if latest is not None and latest.status in OPEN_STATUSES else None
    if decision.allowed:
        label, css = "Access granted", "approved"
    elif decision.reason == "anonymous":
        label, css = "", ""
    elif decision.reason == "license_changed":
        label, css = "License changed: accept again", "needs_info"
    elif open_application is not None:
        label, css = f"Application {open_application.get_status_display().lower()}", open_application.status
    elif decision.reason in {"grant_expired", "grant_revoked"}:
        label, css = (
            ("Access expired", "rejected") if decision.reason == "grant_expired" else ("Access revoked", "revoked")
        )
    elif release.is_gated:
        label, css = "Not applied", ""
    else:
        label, css = "License not accepted", ""
    return {
        "decision": decision,
        "open_application": open_application,
        "latest_application": latest,
        "reapply_from": _reapply_from(latest),
        "label": label,
        "css": css,
    }


def catalog_index(request: HttpRequest) -> HttpResponse:
    releases = list(selectors.catalog_releases())
    latest = _latest_applications(request.user)
    families = []
    for family, members in groupby(releases, key=lambda r: r.family):
        families.append(
            {
                "family": family,
                "releases": [
                    {"release": r, "state": _access_state(request.user, r, latest.get(r.pk))} for r in members
                ],
            }
        )
    return render(request, "access/catalog/index.html", {"families": families})


def _model_card(release: Release) -> Any:
    try:
        return release.model_card
    except Release.model_card.RelatedObjectDoesNotExist:  # type: ignore[attr-defined]
        return None


def release_detail(request: HttpRequest, slug: str) -> HttpResponse:
    release = selectors.release_by_slug(slug)
    data_card = release.data_card
    datasets = [
        {**item, "share_percent": round(float(item.get("share") or 0) * 100, 1)} for item in (data_card.datasets or [])
    ]
    latest = _latest_applications(request.user).get(release.pk)
    return render(
        request,
        "access/catalog/detail.html",
        {
            "release": release,
            "family": release.family,
            "model_card": _model_card(release),
            "data_card": data_card,
            "datasets": datasets,
            "license_version": release.license.current_version,
            "is_moe": bool(release.n_experts),
            "state": _access_state(request.user, release, latest),
        },
    )


@require_http_methods(["GET", "POST"])
def release_license(request: HttpRequest, slug: str) -> HttpResponse:
    release = selectors.release_by_slug(slug)
    current = release.license.current_version
    if request.method == "POST" and not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    decision = selectors.release_access_check(user=request.user, release=release)
    # Accepting here is how open releases are unlocked, and how grant holders accept a new version.
    # Everyone else with a gated release accepts as part of their application.
    can_accept = (
        request.user.is_authenticated
        and current is not None
        and (not release.is_gated or (decision.grant is not None and decision.grant.is_current()))
    )
    accepted_current = (
        LicenseAcceptance.objects.filter(user=request.user, release=release, license_version=current).first()
        if request.user.is_authenticated and current is not None
        else None
    )
    label = _license_label(release)
    form = LicenseAcceptForm(
        request.POST if request.method == "POST" else None,
        initial={"license_version_id": current.pk if current else None},
        license_label=label,
    )
    status = 200
    service_error = ""
    if request.method == "POST":
        status = 400
        if not can_accept:
            service_error = f"{release.name} is gated: you accept its license as part of your application."
            status = 403
        elif form.is_valid():
            try:
                license_accept(
                    user=request.user,
                    release=release,
                    license_version_id=form.cleaned_data["license_version_id"],
                    meta=RequestMeta.from_request(request),
                )
            except AccessError as exc:
                status = exc.http_status
                service_error = exc.message
                # Show the version now in force, with a fresh box to tick.
                form = LicenseAcceptForm(
                    initial={"license_version_id": current.pk if current else None}, license_label=label
                )
            else:
                messages.success(request, f"You accepted {label} for {release.name}.")
                return redirect("release-detail", slug=release.slug)
    return render(
        request,
        "access/catalog/license.html",
        {
            "release": release,
            "license_version": current,
            "form": form,
            "can_accept": can_accept,
            "accepted_current": accepted_current,
            "decision": decision,
            "service_error": service_error,
        },
        status=status,
    )


@login_required
@require_http_methods(["GET", "POST"])
def release_apply(request: HttpRequest, slug: str) -> HttpResponse:
    release = selectors.release_by_slug(slug)
    if not release.is_gated:
        messages.info(
            request, f"{release.name} is an open release: accept its license to download, no application needed."
        )
        return redirect("release-license", slug=release.slug)
    user = request.user
    current = release.license.current_version
    label = _license_label(release)
    blocker = selectors.apply_blocker(user=user, release=release)
    status = 200
    conflict_application = None
    if request.method == "POST":
        form = ApplicationForm(request.POST, license_label=label)
        status = 400
        if form.is_valid():
            try:
                application = application_submit(
                    applicant=user,
                    release=release,
                    data=form.to_input(),
                    meta=RequestMeta.from_request(request),
                )
            except AccessError as exc:
                status = exc.http_status
                if isinstance(exc, Conflict) and exc.field == "license_version":
                    # The license changed under them: keep every answer, show the new text, untick the box.
                    data = request.POST.copy()
                    data["license_version_id"] = str(current.pk) if current else ""
                    data.pop("accept_license", None)
                    form = ApplicationForm(data, license_label=_license_label(release))
                    form.is_valid()
                    form.errors.pop("accept_license", None)
                    form.add_error(None, exc.message)
                else:
                    apply_service_error(form, exc)
                    conflict_application = blocker.application if blocker is not None else None
            else:
                messages.success(
                    request,
                    f"Your application #{application.pk} for {release.name} is submitted. "
                    "We will email you when a reviewer decides.",
                )
                return redirect("application-detail", application_id=application.pk)
    else:
        form = ApplicationForm(
            initial={
                "full_name": user.full_name,
                "affiliation": user.affiliation,
                "license_version_id": current.pk if current else None,
            },
            license_label=label,
        )
    return render(
        request,
        "access/catalog/apply.html",
        {
            "release": release,
            "form": form,
            "license_version": current,
            "blocker": blocker if request.method == "GET" else None,
            "conflict_application": conflict_application,
            "research_purpose_min": settings.RESEARCH_PURPOSE_MIN_LENGTH,
        },
        status=status,
    )

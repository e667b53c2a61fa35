"""The grants list and revoking one."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from access import selectors
from access.errors import Conflict, InvalidInput
from access.models import Grant, GrantStatus
from access.services.audit import RequestMeta
from access.services.grants import grant_revoke
from access.views.review.common import reviewer_required, safe_next
from access.views.review.forms import DEFAULT_PAGE_SIZE, GrantFilterForm, RevokeForm, release_choices


@reviewer_required
@require_GET
def grants(request: HttpRequest) -> HttpResponse:
    form = GrantFilterForm(request.GET, releases=release_choices())
    form.is_valid()
    data = form.cleaned_data
    queryset = Grant.objects.select_related("user", "release", "revoked_by").order_by("-starts_at", "pk")
    now = timezone.now()
    if data.get("release"):
        queryset = queryset.filter(release__slug=data["release"])
    if data.get("status") == "active":
        queryset = queryset.filter(status=GrantStatus.ACTIVE, expires_at__gt=now)
    elif data.get("status") == "expired":
        queryset = queryset.filter(status=GrantStatus.ACTIVE, expires_at__lte=now)
    elif data.get("status") == GrantStatus.REVOKED:
        queryset = queryset.filter(status=GrantStatus.REVOKED)
    if data.get("q"):
        queryset = queryset.filter(user__email__icontains=data["q"].strip())
    page = Paginator(queryset, DEFAULT_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "access/review/grants.html",
        {"form": form, "page": page, "now": now, "here": request.get_full_path()},
    )


@reviewer_required
@require_POST
def revoke(request: HttpRequest, grant_id: int) -> HttpResponse:
    grant = selectors.access_grant(actor=request.user, grant_id=grant_id)  # type: ignore[arg-type]
    back = safe_next(request, reverse("review-grants"))
    form = RevokeForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Grant #{grant.pk} was not revoked. Reason: say why; the holder is told.")
        return redirect(back)
    try:
        grant_revoke(
            grant=grant,
            actor=request.user,  # type: ignore[arg-type]
            reason=form.cleaned_data["reason"],
            meta=RequestMeta.from_request(request),
        )
    except (Conflict, InvalidInput) as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Grant #{grant.pk} for {grant.user.email} on {grant.release.name} is revoked.")
    return redirect(back)

"""Pages of the gateway: the playground and the usage page for users; deployments, usage (with the CSV
export) and per-grant limits for operators. Each view validates, calls one service or selector, renders."""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from access.errors import AccessError
from access.forms import apply_service_error
from access.services.audit import RequestMeta
from gateway import selectors
from gateway.charts import usage_chart
from gateway.counters import get_counters, scope_of
from gateway.forms import DeploymentAddForm, GrantLimitsForm, UsageFilterForm
from gateway.services import deployments as deployment_services
from gateway.services.limits import grant_limits_set

USAGE_DAYS = 30


def _operator(request: HttpRequest) -> None:
    if not selectors.is_operator(request.user):
        raise PermissionDenied("Only operators and reviewers can see deployments and usage.")


def _manager(request: HttpRequest, action: str) -> None:
    if not selectors.can_manage_deployments(request.user, action):
        raise PermissionDenied(
            f"Only superusers, or accounts given “Can {action} deployment” in the admin, can {action} engines: "
            "the portal connects to the URLs and sends them the secret file's content."
        )


# --- Users ------------------------------------------------------------------------------------


@login_required
@require_GET
def playground(request: HttpRequest) -> HttpResponse:
    """Grant holders try their models here. The page calls the portal's own /v1/completions with the
    session (and its CSRF token), never with an API key in the page."""
    models = selectors.user_models(user=request.user)
    if not models:
        raise PermissionDenied(
            "The playground is for approved users: you have no access to a model that is being served now. "
            "Apply for access from a model's page."
        )
    selected = request.GET.get("model", "")
    return render(
        request,
        "gateway/playground.html",
        {
            "models": models,
            "selected": selected if any(m.id == selected for m in models) else models[0].id,
            "api_base": request.build_absolute_uri("/v1"),
        },
    )


def usage_context(user: Any, *, days: int = USAGE_DAYS) -> dict[str, Any]:
    now = timezone.now()
    rows = selectors.user_usage_by_day(user=user, days=days, now=now)
    first_day = selectors.start_of_day(now).date() - timedelta(days=days - 1)
    return {"usage_rows": rows, "chart": usage_chart(rows, first_day=first_day, days=days), "usage_days": days}


@login_required
@require_GET
def my_usage(request: HttpRequest) -> HttpResponse:
    context = usage_context(request.user)
    context["models"] = selectors.user_models(user=request.user)
    context["limits"] = selectors.default_limits()
    return render(request, "gateway/my_usage.html", context)


# --- Operators: deployments -------------------------------------------------------------------


def _deployment_rows() -> list[dict[str, Any]]:
    deployments = list(selectors.operator_deployments())
    replica_ids = [replica.pk for deployment in deployments for replica in deployment.replicas.all()]
    outstanding = get_counters().outstanding(replica_ids=replica_ids, now=time.time())
    return [
        {
            "deployment": deployment,
            "status": selectors.deployment_status(deployment),
            "replicas": [(replica, outstanding.get(replica.pk, 0)) for replica in deployment.replicas.all()],
        }
        for deployment in deployments
    ]


@login_required
@require_GET
def deployments(request: HttpRequest) -> HttpResponse:
    _operator(request)
    return render(
        request,
        "gateway/deployments.html",
        {
            "rows": _deployment_rows(),
            "can_add": selectors.can_manage_deployments(request.user, "add"),
            "health_seconds": settings.GATEWAY_HEALTH_CHECK_SECONDS,
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def deployment_add(request: HttpRequest) -> HttpResponse:
    _operator(request)
    _manager(request, "add")
    form = DeploymentAddForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            deployment = deployment_services.deployment_add(
                release=data["release"],
                checkpoint=data["checkpoint"],
                urls=data["urls"].splitlines(),
                secret_file=data["secret_file"],
                tp_size=data["tp_size"],
                max_context=data["max_context"],
                actor=request.user,  # type: ignore[arg-type]
                meta=RequestMeta.from_request(request),
            )
        except AccessError as error:
            apply_service_error(form, error)
        else:
            messages.success(request, f"{deployment} added; its replicas are checked within seconds.")
            return redirect("gateway-deployment", deployment_id=deployment.pk)
    return render(
        request,
        "gateway/deployment_add.html",
        {"form": form, "secrets_dir": settings.GATEWAY_SECRETS_DIR},
        status=400 if request.method == "POST" else 200,
    )


@login_required
@require_GET
def deployment_detail(request: HttpRequest, deployment_id: int) -> HttpResponse:
    deployment = selectors.access_deployment(actor=request.user, deployment_id=deployment_id)
    replicas = list(deployment.replicas.all())
    outstanding = get_counters().outstanding(replica_ids=[r.pk for r in replicas], now=time.time())
    since = timezone.now() - timedelta(hours=24)
    recent = deployment.usage_records.filter(created_at__gte=since)
    return render(
        request,
        "gateway/deployment_detail.html",
        {
            "deployment": deployment,
            "status": selectors.deployment_status(deployment),
            "replicas": [(replica, outstanding.get(replica.pk, 0)) for replica in replicas],
            "requests_24h": recent.count(),
            "records": deployment.usage_records.select_related("user", "release")[:20],
            "can_remove": selectors.can_manage_deployments(request.user, "delete"),
        },
    )


@login_required
@require_POST
def deployment_drain(request: HttpRequest, deployment_id: int) -> HttpResponse:
    deployment = selectors.access_deployment(actor=request.user, deployment_id=deployment_id)
    draining = request.POST.get("draining", "1") != "0"
    try:
        deployment_services.deployment_set_draining(
            deployment=deployment,
            draining=draining,
            actor=request.user,  # type: ignore[arg-type]
            meta=RequestMeta.from_request(request),
        )
    except AccessError as error:
        messages.error(request, error.message)
    else:
        messages.success(
            request,
            f"{deployment} is draining: it takes no new requests; running ones finish."
            if draining
            else f"{deployment} takes requests again.",
        )
    return redirect("gateway-deployment", deployment_id=deployment.pk)


@login_required
@require_POST
def deployment_remove(request: HttpRequest, deployment_id: int) -> HttpResponse:
    deployment = selectors.access_deployment(actor=request.user, deployment_id=deployment_id)
    _manager(request, "delete")
    try:
        deployment_services.deployment_remove(
            deployment=deployment,
            actor=request.user,  # type: ignore[arg-type]
            meta=RequestMeta.from_request(request),
        )
    except AccessError as error:
        messages.error(request, error.message)
        return redirect("gateway-deployment", deployment_id=deployment.pk)
    messages.success(request, f"{deployment} removed; no request goes to its engines any more.")
    return redirect("gateway-deployments")


# --- Operators: usage and limits --------------------------------------------------------------


def _usage_filters(form: UsageFilterForm) -> selectors.UsageFilters:
    data = form.cleaned_data
    return selectors.UsageFilters(
        date_from=data.get("date_from"),
        date_to=data.get("date_to"),
        release=data.get("release") or "",
        user_email=data.get("user") or "",
    )


@login_required
@require_GET
def usage(request: HttpRequest) -> HttpResponse:
    _operator(request)
    form = UsageFilterForm(request.GET)
    if not form.is_valid():
        return render(request, "gateway/usage.html", {"form": form, "rows": []}, status=400)
    filters = _usage_filters(form)
    rows = selectors.usage_by_user_release(filters)[:500]
    for row in rows:
        row["mean_latency_ms"] = int(row["latency_ms"] or 0) // max(row["requests"], 1)
    return render(
        request,
        "gateway/usage.html",
        {
            "form": form,
            "rows": rows,
            "csv_query": request.GET.urlencode(),
            "csv_limit": settings.GATEWAY_USAGE_CSV_MAX_ROWS,
        },
    )


# Spreadsheets run a cell starting with one of these as a formula; model names and emails are typed
# by outsiders (OWASP "CSV injection").
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _safe(cell: str) -> str:
    return "'" + cell if cell.startswith(_FORMULA_PREFIXES) else cell


class _Echo:
    def write(self, value: str) -> str:
        return value


def _csv_lines(filters: selectors.UsageFilters, limit: int) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(selectors.USAGE_CSV_COLUMNS)
    written = 0
    for row in selectors.usage_csv_rows(filters, limit=limit + 1):
        if written == limit:
            yield writer.writerow([f"# truncated after {limit} rows: narrow the dates to export the rest"])
            return
        yield writer.writerow([_safe(cell) for cell in row])
        written += 1


@login_required
@require_GET
def usage_csv(request: HttpRequest) -> HttpResponseBase:
    """Every usage row matching the filters, oldest first, streamed (a server-side cursor, a row at a
    time) and bounded by GATEWAY_USAGE_CSV_MAX_ROWS."""
    _operator(request)
    form = UsageFilterForm(request.GET)
    if not form.is_valid():
        problems = "; ".join(f"{name}: {' '.join(str(e) for e in errs)}" for name, errs in form.errors.items())
        return HttpResponse(f"Fix the filters: {problems}", status=400, content_type="text/plain; charset=utf-8")
    response = StreamingHttpResponse(
        _csv_lines(_usage_filters(form), settings.GATEWAY_USAGE_CSV_MAX_ROWS), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="usage-{timezone.now():%Y%m%d}.csv"'
    return response


@login_required
@require_http_methods(["GET", "POST"])
def grant_limits(request: HttpRequest, grant_id: int) -> HttpResponse:
    _operator(request)
    grant = selectors.access_limits_grant(actor=request.user, grant_id=grant_id)
    limits = selectors.effective_limits(grant=grant)
    override = getattr(grant, "gateway_limits", None) if hasattr(grant, "gateway_limits") else None
    initial = (
        {name: getattr(override, name) for name in ("tokens_per_day", "requests_per_minute", "max_concurrent")}
        if override
        else {}
    )
    form = GrantLimitsForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            grant_limits_set(
                grant=grant,
                actor=request.user,  # type: ignore[arg-type]
                meta=RequestMeta.from_request(request),
                **form.cleaned_data,
            )
        except AccessError as error:
            apply_service_error(form, error)
        else:
            messages.success(request, f"Limits of grant #{grant.pk} saved; they apply to the next request.")
            return redirect("gateway-grant-limits", grant_id=grant.pk)
    return render(
        request,
        "gateway/grant_limits.html",
        {
            "grant": grant,
            "form": form,
            "limits": limits,
            "defaults": selectors.default_limits(),
            "tokens_today": selectors.tokens_used_today(user_id=grant.user_id, release_id=grant.release_id),
            "in_flight": get_counters().in_flight(
                scope=scope_of(user_id=grant.user_id, release_id=grant.release_id), now=time.time()
            ),
            "usage_url": reverse("gateway-usage") + "?" + f"release={grant.release.slug}&user={grant.user.email}",
        },
        status=400 if request.method == "POST" else 200,
    )

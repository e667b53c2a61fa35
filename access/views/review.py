"""The reviewer dashboard: the queue, one application, grants, and the audit log as CSV.

Every view is for reviewers only (the Reviewers group's `access.review_application` permission, or a
superuser): anonymous visitors are sent to sign in, everyone else gets a 403. Each state change is one
POST that calls one service; a Conflict from the service (another reviewer was faster, the page was
stale) is shown as a message and changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import wraps
from typing import Any

import pycountry
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.forms.utils import flatatt
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, QueryDict, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_GET, require_POST

from access import selectors, services
from access.csv_export import AuditFilters, audit_events, stream_audit_csv
from access.errors import AccessError, Conflict, InvalidInput, NotAllowed
from access.models import (
    Application,
    ApplicationStatus,
    Grant,
    GrantStatus,
    OrganizationType,
    RejectionTemplate,
    Release,
)
from access.models.applications import PENDING_STATUSES

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
COUNTRY_CHOICES = sorted(((c.alpha_2, c.name) for c in pycountry.countries), key=lambda choice: choice[1])
STATUS_PENDING = "pending"
STATUS_ALL = "all"
# The 30-day and 12-week figures change slowly and cost ~100 ms at 100k applications, so every page of
# the queue (each filter click) does not recompute them; a decision made here drops the cached copy.
METRICS_CACHE_KEY = "review:metrics:v1"
METRICS_CACHE_SECONDS = 60

View = Callable[..., HttpResponse]


def reviewer_required(view: View) -> View:
    """Anonymous: to the sign-in page. Signed in but not a reviewer: 403 with the reason."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        try:
            selectors.require_reviewer(request.user)
        except NotAllowed as exc:
            raise PermissionDenied(exc.message) from None
        return view(request, *args, **kwargs)

    return wrapped


def _safe_next(request: HttpRequest, fallback: str) -> str:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return fallback


def _meta(request: HttpRequest) -> services.RequestMeta:
    return services.RequestMeta.from_request(request)


def _review_metrics() -> selectors.ReviewMetrics:
    metrics = cache.get(METRICS_CACHE_KEY)
    if metrics is None:
        metrics = selectors.review_metrics()
        cache.set(METRICS_CACHE_KEY, metrics, METRICS_CACHE_SECONDS)
    return metrics


def _metrics_changed() -> None:
    cache.delete(METRICS_CACHE_KEY)


def human_hours(hours: float | None) -> str:
    """12.5 -> '12.5 hours'; 60 -> '2.5 days'; None -> '—' (no decisions yet)."""
    if hours is None:
        return "—"
    if hours < 1:
        return f"{round(hours * 60)} minutes"
    if hours < 48:
        return f"{hours:.1f} hours"
    return f"{hours / 24:.1f} days"


# --- The decisions-per-week chart -------------------------------------------------------------


@dataclass(frozen=True)
class ChartBar:
    week: date
    count: int
    x: float
    y: float
    width: float
    height: float
    label_x: float
    count_y: float


@dataclass(frozen=True)
class WeeklyChart:
    bars: list[ChartBar]
    width: int
    height: int
    baseline: float
    maximum: int
    total: int


def weekly_chart(weekly: list[tuple[date, int]], *, width: int = 640, height: int = 180) -> WeeklyChart:
    """Bar geometry for an inline SVG: computed here so the template only places rectangles."""
    top, bottom = 16.0, 28.0  # room for the count above each bar and the week label below
    plot_height = height - top - bottom
    maximum = max((count for _, count in weekly), default=0)
    slot = width / max(len(weekly), 1)
    bar_width = slot * 0.7
    bars = []
    for index, (week, count) in enumerate(weekly):
        bar_height = plot_height * count / maximum if maximum else 0.0
        x = index * slot + (slot - bar_width) / 2
        bars.append(
            ChartBar(
                week=week,
                count=count,
                x=round(x, 1),
                y=round(top + plot_height - bar_height, 1),
                width=round(bar_width, 1),
                height=round(bar_height, 1),
                label_x=round(x + bar_width / 2, 1),
                count_y=round(top + plot_height - bar_height - 4, 1),
            )
        )
    return WeeklyChart(
        bars=bars,
        width=width,
        height=height,
        baseline=top + plot_height,
        maximum=maximum,
        total=sum(count for _, count in weekly),
    )


# --- Forms ------------------------------------------------------------------------------------


class DateInput(forms.DateInput):
    input_type = "date"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(format="%Y-%m-%d", **kwargs)


class PlainSelect(forms.Select):
    """A <select> rendered in Python: the template-per-option path costs ~10 ms for 250 countries."""

    def render(self, name: str, value: Any, attrs: dict[str, Any] | None = None, renderer: Any = None) -> str:
        final_attrs = {**self.build_attrs(self.attrs, attrs), "name": name}
        chosen = {str(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None}
        options = format_html_join(
            "\n",
            '<option value="{}"{}>{}</option>',
            (
                (option, mark_safe(" selected") if str(option) in chosen else "", label)
                for option, label in self.choices
            ),
        )
        return format_html("<select{}>\n{}\n</select>", flatatt(final_attrs), options)


class QueueFilterForm(forms.Form):
    status = forms.MultipleChoiceField(
        required=False,
        choices=[
            (STATUS_PENDING, "Pending (submitted or in review)"),
            (STATUS_ALL, "All statuses"),
            *ApplicationStatus.choices,
        ],
        widget=forms.SelectMultiple(attrs={"size": 8}),
        help_text="Hold Ctrl (⌘ on a Mac) to choose several.",
    )
    release = forms.ChoiceField(required=False)
    organization_type = forms.ChoiceField(
        required=False, label="Organization type", choices=[("", "Any"), *OrganizationType.choices]
    )
    country = forms.ChoiceField(required=False, choices=[("", "Any"), *COUNTRY_CHOICES], widget=PlainSelect)
    submitted_from = forms.DateField(required=False, label="Submitted from", widget=DateInput())
    submitted_to = forms.DateField(required=False, label="Submitted to", widget=DateInput())
    q = forms.CharField(required=False, max_length=200, label="Search", help_text="Name, email or affiliation.")
    per_page = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_PAGE_SIZE,
        label="Per page",
        widget=forms.NumberInput(attrs={"style": "width:5em"}),
    )

    def __init__(self, *args: Any, releases: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["release"].choices = [("", "Any"), *releases]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        start, end = data.get("submitted_from"), data.get("submitted_to")
        if start and end and start > end:
            self.add_error("submitted_to", "The end of the date range is before its start: swap the two dates.")
        return data

    def statuses(self) -> list[str] | None:
        chosen = self.cleaned_data.get("status") or []
        if not chosen:
            return None  # the selector's default: pending
        if STATUS_ALL in chosen:
            return list(ApplicationStatus.values)
        statuses: list[str] = []
        for value in chosen:
            statuses.extend(PENDING_STATUSES if value == STATUS_PENDING else [value])
        return sorted(set(statuses))

    def filters(self) -> selectors.QueueFilters:
        """Filters from the valid fields; an invalid field is shown with its error and ignored."""
        data = self.cleaned_data
        return selectors.QueueFilters(
            status=self.statuses(),
            release=data.get("release") or None,
            organization_type=data.get("organization_type") or None,
            country=data.get("country") or None,
            submitted_from=data.get("submitted_from"),
            submitted_to=None if "submitted_to" in self.errors else data.get("submitted_to"),
            search=data.get("q") or "",
        )

    def page_size(self) -> int:
        return self.cleaned_data.get("per_page") or DEFAULT_PAGE_SIZE


def _active_templates() -> Any:
    return RejectionTemplate.objects.filter(is_active=True).order_by("title")


class BulkDecisionForm(forms.Form):
    application_ids = forms.TypedMultipleChoiceField(coerce=int, required=True, choices=())
    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("reject", "Reject")])
    template = forms.ModelChoiceField(
        queryset=RejectionTemplate.objects.none(), required=False, label="Rejection template", empty_label="None"
    )
    reason = forms.CharField(
        required=False,
        label="Rejection reason",
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Sent to every rejected applicant, after the template's text if you picked one.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["template"].queryset = _active_templates()
        self.fields["application_ids"].error_messages["required"] = (
            "Select at least one application with the checkboxes in the first column."
        )

    def full_clean(self) -> None:
        # Any id may be posted: the service checks each one and names those that do not exist.
        ids = self.data.getlist("application_ids") if hasattr(self.data, "getlist") else []
        self.fields["application_ids"].choices = [(value, value) for value in ids]
        super().full_clean()

    def reason_text(self) -> str:
        """The template (its placeholders filled per applicant by the service) + free text."""
        parts = []
        template = self.cleaned_data.get("template")
        if template is not None:
            parts.append(template.body)
        free_text = (self.cleaned_data.get("reason") or "").strip()
        if free_text and free_text not in parts:
            parts.append(free_text)
        return "\n\n".join(parts)


class VersionedForm(forms.Form):
    """Every action names the version of the application the reviewer saw."""

    expected_version = forms.IntegerField(widget=forms.HiddenInput, min_value=1)


class StartReviewForm(VersionedForm):
    pass


class ApproveForm(VersionedForm):
    expires_on = forms.DateField(
        label="Access expires on",
        widget=DateInput(),
        help_text="The grant ends at the end of this day (UTC).",
    )

    def expires_at(self) -> datetime:
        day: date = self.cleaned_data["expires_on"]
        return datetime.combine(day, time(23, 59, 59), tzinfo=timezone.get_current_timezone())


class RejectForm(VersionedForm):
    template = forms.ModelChoiceField(
        queryset=RejectionTemplate.objects.none(), required=False, label="Start from a template", empty_label="None"
    )
    reason = forms.CharField(
        required=False,
        label="Reason sent to the applicant",
        widget=forms.Textarea(attrs={"rows": 5}),
        help_text="Added after the template's text; without a template, this is the whole reason.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["template"].queryset = _active_templates()

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if not data.get("template") and not (data.get("reason") or "").strip():
            self.add_error("reason", "Give the applicant a reason: pick a template or write one.")
        return data

    def reason_for(self, application: Application) -> str:
        template = self.cleaned_data.get("template")
        free_text = (self.cleaned_data.get("reason") or "").strip()
        rendered = (
            services.rejection_template_render(template=template, application=application).strip() if template else ""
        )
        # The inline script copies the template's text into the box; don't send it twice.
        if rendered and rendered in free_text:
            return free_text
        return "\n\n".join(part for part in (rendered, free_text) if part)


class RequestInfoForm(VersionedForm):
    message = forms.CharField(
        label="Question for the applicant",
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="The applicant sees this and answers on their status page.",
    )


class NoteForm(forms.Form):
    body = forms.CharField(
        label="Internal note", widget=forms.Textarea(attrs={"rows": 3}), help_text="Only reviewers see notes."
    )


class GrantFilterForm(forms.Form):
    release = forms.ChoiceField(required=False)
    status = forms.ChoiceField(
        required=False,
        choices=[("", "Any"), ("active", "Active"), ("expired", "Expired"), (GrantStatus.REVOKED, "Revoked")],
    )
    q = forms.CharField(required=False, max_length=200, label="Holder's email")

    def __init__(self, *args: Any, releases: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["release"].choices = [("", "Any"), *releases]


class RevokeForm(forms.Form):
    reason = forms.CharField(max_length=2000, label="Reason")


class AuditCsvForm(forms.Form):
    application = forms.IntegerField(required=False, min_value=1)
    action = forms.CharField(required=False, max_length=64)
    created_from = forms.DateField(required=False)
    created_to = forms.DateField(required=False)


def _release_choices() -> list[tuple[str, str]]:
    return list(Release.objects.order_by("name").values_list("slug", "name"))


# --- The queue --------------------------------------------------------------------------------


class QueuePaginator(Paginator):
    """Finds the page's primary keys first, then loads those rows with their joins.

    Sorting only (submitted_at, id), which the (status, submitted_at) index covers, instead of whole
    rows with their long texts: at 100k applications the default queue page goes from ~90 ms to ~4 ms.
    Two queries per page, whatever its size; the count is Django's plain COUNT(*) without the joins.
    """

    def page(self, number: Any) -> Any:
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = bottom + self.per_page
        if top + self.orphans >= self.count:
            top = self.count
        keys = list(self.object_list.values_list("pk", flat=True)[bottom:top])
        return self._get_page(list(self.object_list.filter(pk__in=keys)), number, self)


def _queue_data(query: QueryDict) -> QueryDict:
    data = query.copy()
    if not data.getlist("status"):
        data.setlist("status", [STATUS_PENDING])
    return data


def _render_queue(
    request: HttpRequest, query: QueryDict, *, bulk_form: BulkDecisionForm | None = None, status: int = 200
) -> HttpResponse:
    form = QueueFilterForm(_queue_data(query), releases=_release_choices())
    form.is_valid()
    paginator = QueuePaginator(selectors.review_queue(form.filters()), form.page_size())
    page = paginator.get_page(query.get("page"))
    metrics = _review_metrics()
    counts = selectors.review_status_counts()  # live: the pending figure must move as soon as one decides
    selected = set(getattr(bulk_form, "cleaned_data", {}).get("application_ids", []))
    return render(
        request,
        "access/review/queue.html",
        {
            "form": form,
            "page": page,
            "paginator": paginator,
            "status_counts": [(value, label, counts.get(value, 0)) for value, label in ApplicationStatus.choices],
            "metrics": metrics,
            "pending": sum(counts.get(status, 0) for status in PENDING_STATUSES),
            "median": human_hours(metrics.median_hours_30d),
            "p90": human_hours(metrics.p90_hours_30d),
            "chart": weekly_chart(metrics.weekly),
            "bulk_form": bulk_form or BulkDecisionForm(),
            "default_grant_days": settings.GRANT_DEFAULT_DAYS,
            "selected": selected,
            "query": query,
            # Where a bulk decision comes back to: this queue with these filters (also when re-rendered by a POST).
            "here": reverse("review-queue") + (f"?{query.urlencode()}" if query else ""),
        },
        status=status,
    )


@reviewer_required
@require_GET
def queue(request: HttpRequest) -> HttpResponse:
    return _render_queue(request, request.GET)


@reviewer_required
@require_POST
def bulk_decide(request: HttpRequest) -> HttpResponse:
    back = _safe_next(request, reverse("review-queue"))
    form = BulkDecisionForm(request.POST)
    query = QueryDict(back.partition("?")[2])
    if not form.is_valid():
        return _render_queue(request, query, bulk_form=form, status=400)
    try:
        result = services.applications_bulk_decide(
            application_ids=form.cleaned_data["application_ids"],
            reviewer=request.user,  # type: ignore[arg-type]
            decision=form.cleaned_data["decision"],
            reason=form.reason_text(),
            meta=_meta(request),
        )
    except InvalidInput as exc:
        form.add_error(exc.field if exc.field in form.fields else None, exc.message)
        return _render_queue(request, query, bulk_form=form, status=400)
    _metrics_changed()
    verb = "approved" if form.cleaned_data["decision"] == "approve" else "rejected"
    if result.decided:
        messages.success(
            request,
            f"{len(result.decided)} application(s) {verb}: " + ", ".join(f"#{pk}" for pk in result.decided) + ".",
        )
    else:
        messages.warning(request, f"No application was {verb}.")
    for pk, message in sorted(result.conflicts.items()):
        messages.error(request, f"#{pk} not {verb}: {message}")
    return redirect(back)


# --- One application --------------------------------------------------------------------------


def publication_link(publication: str) -> tuple[str, str]:
    """(text, URL): DOIs are stored as `doi:10.x/y` and link to the DOI resolver."""
    if publication.lower().startswith("doi:"):
        doi = publication[4:]
        return publication, f"https://doi.org/{doi}"
    return publication, publication


def _country_name(code: str) -> str:
    country = pycountry.countries.get(alpha_2=code) if code else None
    return country.name if country is not None else code


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
    templates = list(_active_templates())
    context: dict[str, Any] = {
        "application": application,
        "publications": [publication_link(p) for p in application.publications or []],
        "country_name": _country_name(application.country),
        "acceptance": application.license_acceptance,
        "history": selectors.applicant_history(application),
        "signals": selectors.application_signals(application),
        "thread": application.messages.select_related("author").order_by("created_at", "pk"),
        "notes": application.notes.select_related("author").order_by("created_at", "pk"),
        "audit": audit_events(AuditFilters(application_id=application.pk)),
        "grants": application.grants.select_related("release", "revoked_by").order_by("-starts_at"),
        "rendered_templates": {
            str(template.pk): services.rejection_template_render(template=template, application=application)
            for template in templates
        },
        "can_start": application.status == ApplicationStatus.SUBMITTED,
        "can_decide": application.status in PENDING_STATUSES,
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
        _metrics_changed()
        messages.success(request, done)
    return redirect("review-detail", application.pk)


@reviewer_required
@require_POST
def start_review(request: HttpRequest, application_id: int) -> HttpResponse:
    def call(application: Application, form: StartReviewForm) -> str:
        # The service guards the status; the version check catches a page opened before any other change.
        if form.cleaned_data["expected_version"] != application.version:
            raise Conflict(
                f"Application #{application.pk} changed since you opened it (it is now "
                f"'{application.get_status_display()}'). Reload the page."
            )
        services.application_start_review(application=application, reviewer=request.user, meta=_meta(request))  # type: ignore[arg-type]
        return f"You are reviewing application #{application.pk}."

    return _act(
        request, application_id, form_class=StartReviewForm, form_name="start_form", auto_id="start_%s", call=call
    )


@reviewer_required
@require_POST
def approve(request: HttpRequest, application_id: int) -> HttpResponse:
    def call(application: Application, form: ApproveForm) -> str:
        grant = services.application_approve(
            application=application,
            reviewer=request.user,
            meta=_meta(request),  # type: ignore[arg-type]
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
        services.application_reject(
            application=application,
            reviewer=request.user,
            reason=form.reason_for(application),  # type: ignore[arg-type]
            meta=_meta(request),
            expected_version=form.cleaned_data["expected_version"],
        )
        return f"Application #{application.pk} rejected; the applicant was told the reason."

    return _act(request, application_id, form_class=RejectForm, form_name="reject_form", auto_id="reject_%s", call=call)


@reviewer_required
@require_POST
def request_info(request: HttpRequest, application_id: int) -> HttpResponse:
    def call(application: Application, form: RequestInfoForm) -> str:
        services.application_request_info(
            application=application,
            reviewer=request.user,
            message=form.cleaned_data["message"],  # type: ignore[arg-type]
            meta=_meta(request),
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
        services.application_add_note(
            application=application,
            reviewer=request.user,
            body=form.cleaned_data["body"],
            meta=_meta(request),  # type: ignore[arg-type]
        )
        return "Note added."

    return _act(request, application_id, form_class=NoteForm, form_name="note_form", auto_id="note_%s", call=call)


# --- Grants -----------------------------------------------------------------------------------


@reviewer_required
@require_GET
def grants(request: HttpRequest) -> HttpResponse:
    form = GrantFilterForm(request.GET, releases=_release_choices())
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
def grant_revoke(request: HttpRequest, grant_id: int) -> HttpResponse:
    grant = selectors.access_grant(actor=request.user, grant_id=grant_id)  # type: ignore[arg-type]
    back = _safe_next(request, reverse("review-grants"))
    form = RevokeForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Grant #{grant.pk} was not revoked. Reason: say why; the holder is told.")
        return redirect(back)
    try:
        services.grant_revoke(grant=grant, actor=request.user, reason=form.cleaned_data["reason"], meta=_meta(request))  # type: ignore[arg-type]
    except (Conflict, InvalidInput) as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Grant #{grant.pk} for {grant.user.email} on {grant.release.name} is revoked.")
    return redirect(back)


# --- Audit log as CSV -------------------------------------------------------------------------


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

"""The reviewer dashboard's forms: queue filters, bulk decisions, one action per form, grant and audit filters."""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Any

from django import forms
from django.forms.utils import flatatt
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from access import selectors
from access.countries import country_choices
from access.forms import FilterDateField
from access.limits import MAX_ID, MAX_SEARCH, MAX_TEXT
from access.models import Application, ApplicationStatus, GrantStatus, OrganizationType, RejectionTemplate, Release
from access.models.applications import PENDING_STATUSES
from access.services.reviews import rejection_template_render

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
STATUS_PENDING = "pending"
STATUS_ALL = "all"


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
    country = forms.ChoiceField(required=False, choices=[("", "Any"), *country_choices()], widget=PlainSelect)
    submitted_from = FilterDateField(required=False, label="Submitted from", widget=DateInput())
    submitted_to = FilterDateField(required=False, label="Submitted to", widget=DateInput())
    q = forms.CharField(required=False, max_length=MAX_SEARCH, label="Search", help_text="Name, email or affiliation.")
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


def active_templates() -> Any:
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
        max_length=MAX_TEXT,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Sent to every rejected applicant, after the template's text if you picked one.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["template"].queryset = active_templates()
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
        max_length=MAX_TEXT,
        widget=forms.Textarea(attrs={"rows": 5}),
        help_text="Added after the template's text; without a template, this is the whole reason.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["template"].queryset = active_templates()

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if not data.get("template") and not (data.get("reason") or "").strip():
            self.add_error("reason", "Give the applicant a reason: pick a template or write one.")
        return data

    def reason_for(self, application: Application) -> str:
        template = self.cleaned_data.get("template")
        free_text = (self.cleaned_data.get("reason") or "").strip()
        rendered = rejection_template_render(template=template, application=application).strip() if template else ""
        # The inline script copies the template's text into the box; don't send it twice.
        if rendered and rendered in free_text:
            return free_text
        return "\n\n".join(part for part in (rendered, free_text) if part)


class RequestInfoForm(VersionedForm):
    message = forms.CharField(
        label="Question for the applicant",
        max_length=MAX_TEXT,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="The applicant sees this and answers on their status page.",
    )


class NoteForm(forms.Form):
    body = forms.CharField(
        label="Internal note",
        max_length=MAX_TEXT,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Only reviewers see notes.",
    )


class GrantFilterForm(forms.Form):
    release = forms.ChoiceField(required=False)
    status = forms.ChoiceField(
        required=False,
        choices=[("", "Any"), ("active", "Active"), ("expired", "Expired"), (GrantStatus.REVOKED, "Revoked")],
    )
    q = forms.CharField(required=False, max_length=MAX_SEARCH, label="Holder's email")

    def __init__(self, *args: Any, releases: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["release"].choices = [("", "Any"), *releases]


class RevokeForm(forms.Form):
    reason = forms.CharField(max_length=MAX_TEXT, label="Reason")


class AuditCsvForm(forms.Form):
    application = forms.IntegerField(required=False, min_value=1, max_value=MAX_ID)
    action = forms.CharField(required=False, max_length=64)
    created_from = FilterDateField(required=False)
    created_to = FilterDateField(required=False)


def release_choices() -> list[tuple[str, str]]:
    return list(Release.objects.order_by("name").values_list("slug", "name"))

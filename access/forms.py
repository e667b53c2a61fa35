"""HTML forms of the access app. They check types and shapes; the services own the rules.

`ApplicationForm.clean` runs the service's own `ApplicationInput.clean`, so every field error the
service would report is shown next to its field in one round trip, with the same wording.
"""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator

from access import throttle
from access.countries import country_choices
from access.errors import AccessError
from access.limits import (
    FILTER_DATE_ERROR,
    MAX_FILTER_DATE,
    MAX_NAME,
    MAX_PUBLICATION,
    MAX_PUBLICATIONS,
    MAX_TEXT,
    MIN_FILTER_DATE,
)
from access.models import OrganizationType
from access.services.applications import ApplicationInput


def apply_service_error(form: forms.Form, exc: AccessError) -> None:
    """Show a service error on `form`: next to its field(s) when it names one the form has, else on top."""
    errors: dict[str, str] = getattr(exc, "errors", None) or {}
    if not errors and exc.field:
        errors = {exc.field: exc.message}
    if not errors:
        form.add_error(None, exc.message)
        return
    for name, message in errors.items():
        form.add_error(name if name in form.fields else None, message)


class FilterDateField(forms.DateField):
    """A date to filter by, bounded like the API's (access.limits), so "the day after" cannot overflow."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            validators=[
                MinValueValidator(MIN_FILTER_DATE, FILTER_DATE_ERROR),
                MaxValueValidator(MAX_FILTER_DATE, FILTER_DATE_ERROR),
            ],
            **kwargs,
        )


# --- Accounts ---------------------------------------------------------------------------------


class SignupForm(forms.Form):
    email = forms.EmailField(max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    full_name = forms.CharField(
        label="Full name", max_length=MAX_NAME, widget=forms.TextInput(attrs={"autocomplete": "name"})
    )
    affiliation = forms.CharField(
        max_length=MAX_NAME,
        help_text="University, institute or company you do research with.",
        widget=forms.TextInput(attrs={"autocomplete": "organization"}),
    )
    password = forms.CharField(
        strip=False,
        help_text="At least 10 characters; not a common password and not all digits.",
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )
    password_again = forms.CharField(
        label="Password again", strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("password") and data.get("password_again") and data["password"] != data["password_again"]:
            self.add_error("password_again", "The two passwords differ. Type the same password twice.")
        return data


class LoginForm(forms.Form):
    email = forms.EmailField(
        max_length=254, widget=forms.EmailInput(attrs={"autocomplete": "email", "autofocus": True})
    )
    password = forms.CharField(strip=False, widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}))


class AdminLoginForm(AdminAuthenticationForm):
    """The Django admin's sign-in, under the same throttle as the portal's (see access/throttle.py)."""

    def clean(self) -> dict[str, Any]:
        email = self.cleaned_data.get("username")
        password = self.cleaned_data.get("password")
        if email is not None and password:
            user, locked = throttle.authenticate_throttled(self.request, email=email, password=password)
            if locked is not None:
                raise ValidationError(locked.message, code="locked")
            if user is None:
                raise self.get_invalid_login_error()
            self.user_cache = user
            self.confirm_login_allowed(user)
        return self.cleaned_data


class ProfileForm(forms.Form):
    full_name = forms.CharField(label="Full name", max_length=MAX_NAME, required=False)
    affiliation = forms.CharField(max_length=MAX_NAME, required=False)


class ApiKeyForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="For example the machine or script that uses it.")
    expires_at = forms.DateField(
        label="Expires on",
        required=False,
        help_text="Optional. The key stops working at the end of this day (UTC).",
        widget=forms.DateInput(attrs={"type": "date"}),
    )


# --- Catalog and applications -----------------------------------------------------------------


class LicenseAcceptForm(forms.Form):
    license_version_id = forms.IntegerField(widget=forms.HiddenInput)
    accept = forms.BooleanField(
        required=True,
        error_messages={"required": "Tick the box to accept the license, or leave this page."},
    )

    def __init__(self, *args: Any, license_label: str = "the license", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["accept"].label = f"I accept {license_label}"


class ApplicationForm(forms.Form):
    """The license application. Everything the applicant types is kept on any error."""

    full_name = forms.CharField(
        label="Full name",
        max_length=MAX_NAME,
        required=False,
        widget=forms.TextInput(attrs={"required": True, "autocomplete": "name"}),
    )
    affiliation = forms.CharField(
        max_length=MAX_NAME,
        required=False,
        widget=forms.TextInput(attrs={"required": True, "autocomplete": "organization"}),
    )
    organization_type = forms.ChoiceField(
        label="Organization type",
        required=False,
        choices=[("", "Choose…"), *OrganizationType.choices],
        widget=forms.Select(attrs={"required": True}),
    )
    role = forms.CharField(
        max_length=MAX_NAME,
        required=False,
        help_text="For example: PhD student, research scientist.",
        widget=forms.TextInput(attrs={"required": True}),
    )
    country = forms.ChoiceField(label="Country", required=False, widget=forms.Select(attrs={"required": True}))
    research_purpose = forms.CharField(
        label="Research purpose",
        max_length=MAX_TEXT,
        required=False,
        widget=forms.Textarea(attrs={"required": True, "rows": 8}),
    )
    intended_use = forms.CharField(
        label="Intended use",
        max_length=MAX_TEXT,
        required=False,
        help_text="What you will run the model on, and what you will do with its outputs.",
        widget=forms.Textarea(attrs={"required": True, "rows": 5}),
    )
    publications = forms.CharField(
        label="Related publications",
        # Every line at its longest, so the whole box is bounded too; the service checks each line.
        max_length=MAX_PUBLICATIONS * (MAX_PUBLICATION + 1),
        required=False,
        help_text=f"Optional. One URL (https://…) or DOI (10.1234/abcd) per line, at most {MAX_PUBLICATIONS}.",
        widget=forms.Textarea(attrs={"rows": 4}),
    )
    license_version_id = forms.IntegerField(widget=forms.HiddenInput, required=False)
    accept_license = forms.BooleanField(required=False, widget=forms.CheckboxInput(attrs={"required": True}))
    non_commercial_attested = forms.BooleanField(
        label="I attest that I will use the model for non-commercial research only.",
        required=False,
        widget=forms.CheckboxInput(attrs={"required": True}),
    )

    def __init__(self, *args: Any, license_label: str = "the license", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["country"]).choices = [("", "Choose…"), *country_choices()]
        self.fields["accept_license"].label = f"I accept {license_label}"
        minimum = settings.RESEARCH_PURPOSE_MIN_LENGTH
        self.fields[
            "research_purpose"
        ].help_text = f"What question your research asks and why it needs this model: at least {minimum} characters."
        self.fields["research_purpose"].widget.attrs.update({"minlength": minimum, "data-min-length": minimum})

    @staticmethod
    def split_publications(text: str) -> list[str]:
        return [line.strip() for line in (text or "").splitlines() if line.strip()]

    def to_input(self) -> ApplicationInput:
        data = self.cleaned_data
        return ApplicationInput(
            full_name=data.get("full_name", ""),
            affiliation=data.get("affiliation", ""),
            organization_type=data.get("organization_type", ""),
            role=data.get("role", ""),
            country=data.get("country", ""),
            research_purpose=data.get("research_purpose", ""),
            intended_use=data.get("intended_use", ""),
            publications=self.split_publications(data.get("publications", "")),
            license_version_id=data.get("license_version_id"),
            non_commercial_attested=bool(data.get("non_commercial_attested")),
            accept_license=bool(data.get("accept_license")),
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        # The service's own checks, so all field errors appear at once and read the same everywhere.
        for name, message in self.to_input().clean().items():
            if name not in self.errors:
                self.add_error(name if name in self.fields else None, message)
        return data


class AnswerForm(forms.Form):
    message = forms.CharField(
        label="Your answer",
        max_length=MAX_TEXT,
        widget=forms.Textarea(attrs={"rows": 6}),
        error_messages={"required": "Write your answer before sending it."},
    )


class WithdrawForm(forms.Form):
    confirm = forms.BooleanField(
        label="Yes, withdraw this application. I understand I must apply again to get access.",
        error_messages={"required": "Tick the box to confirm that you want to withdraw."},
    )


class RenewalForm(LicenseAcceptForm):
    pass

"""Forms of the gateway pages."""

from __future__ import annotations

from typing import Any

from django import forms

from access.forms import FilterDateField
from access.models import Release
from artifacts.models import Checkpoint, CheckpointState


class CheckpointChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        owner = f", private to {obj.owner.email}" if obj.owner_id is not None else ""
        return f"#{obj.pk} {obj.release.slug}/{obj.variant} (tp {obj.tp_size}{owner})"


class DeploymentAddForm(forms.Form):
    release = forms.ModelChoiceField(
        queryset=Release.objects.filter(is_listed=True).order_by("slug"), to_field_name="slug"
    )
    checkpoint = CheckpointChoiceField(
        queryset=Checkpoint.objects.filter(state=CheckpointState.READY)
        .select_related("release", "owner")
        .order_by("release__slug", "variant"),
        help_text=(
            "A ready checkpoint of the release; the engines serve its files. A private one (a fine-tuning "
            "result) is served to its owner only, as model <release>:<variant>."
        ),
    )
    urls = forms.CharField(
        label="Engine URLs",
        widget=forms.Textarea(attrs={"rows": 3}),
        max_length=5000,
        help_text="One per line, one per replica: http://HOST:PORT of each engine's rank 0.",
    )
    secret_file = forms.CharField(
        max_length=500, help_text="The file the engines were started with (--secret-file), on this host."
    )
    tp_size = forms.IntegerField(label="Tensor-parallel ranks", min_value=1, max_value=4096, initial=1)
    max_context = forms.IntegerField(
        label="Max context (tokens)", min_value=1, max_value=10_000_000, required=False,
        help_text="Empty: learned from the engine at its first health check.",
    )  # fmt: skip


class GrantLimitsForm(forms.Form):
    tokens_per_day = forms.IntegerField(min_value=1, max_value=10**15, required=False)
    requests_per_minute = forms.IntegerField(min_value=1, max_value=10**9, required=False)
    max_concurrent = forms.IntegerField(label="Concurrent requests", min_value=1, max_value=10**6, required=False)


class UsageFilterForm(forms.Form):
    date_from = FilterDateField(label="From", required=False)
    date_to = FilterDateField(label="To (inclusive)", required=False)
    release = forms.SlugField(required=False, max_length=50)
    user = forms.CharField(label="User email contains", required=False, max_length=200)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("date_from") and data.get("date_to") and data["date_from"] > data["date_to"]:
            raise forms.ValidationError("“From” must not be after “To”.")
        return data

"""Forms of the fine-tuning pages. They only shape input; the services check it (and name the field)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from finetune import hyperparameters as hp


class DatasetUploadForm(forms.Form):
    checkpoint = forms.TypedChoiceField(coerce=int, label="Tokenize for checkpoint")
    file = forms.FileField(
        help_text='A .jsonl file (one {"text": ...} object per line) or a .txt file (documents '
        "separated by blank lines)."
    )
    name = forms.CharField(max_length=200, required=False, help_text="Optional; the file name otherwise.")

    def __init__(self, *args: Any, checkpoints: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["checkpoint"].choices = [(c.pk, f"{c.release.name} · {c.variant}") for c in checkpoints]
        limit = settings.FINETUNE_DATASET_MAX_BYTES
        self.fields["file"].help_text += f" At most {limit // (1024 * 1024)} MiB."


class SubmitForm(forms.Form):
    checkpoint = forms.TypedChoiceField(coerce=int, label="Base checkpoint")
    dataset = forms.TypedChoiceField(coerce=int, label="Dataset (ready)")
    gpus = forms.IntegerField(min_value=1, initial=1, label="GPUs (processes)")
    tp = forms.IntegerField(min_value=1, initial=1, label="Tensor parallel (tp)", help_text="Must divide GPUs.")
    max_hours = forms.FloatField(min_value=0.01, label="Time limit (hours)")

    def __init__(self, *args: Any, checkpoints: list[Any], datasets: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["checkpoint"].choices = [(c.pk, f"{c.release.name} · {c.variant}") for c in checkpoints]
        self.fields["dataset"].choices = [
            (d.pk, f"{d.name} ({d.token_count:,} tokens, for {d.checkpoint.release.name})") for d in datasets
        ]
        self.fields["gpus"].max_value = settings.FINETUNE_MAX_GPUS
        self.fields["max_hours"].initial = min(4, settings.FINETUNE_MAX_HOURS_PER_JOB)
        for field in hp.FIELDS:
            if field.kind is str:
                self.fields[field.name] = forms.ChoiceField(
                    choices=[(c, c) for c in field.choices], initial=field.default, help_text=field.help
                )
            elif field.kind is int:
                self.fields[field.name] = forms.IntegerField(initial=field.default, help_text=field.help)
            else:
                self.fields[field.name] = forms.FloatField(initial=field.default, help_text=field.help)

    def hyperparameters(self) -> dict[str, Any]:
        return {field.name: self.cleaned_data[field.name] for field in hp.FIELDS}


class PauseForm(forms.Form):
    reason = forms.CharField(max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))


class ResumeForm(forms.Form):
    from_step = forms.TypedChoiceField(coerce=int, label="Resume from committed step")
    lr = forms.FloatField(required=False, label="New peak learning rate", help_text="Empty: keep the current one.")
    reason = forms.CharField(
        max_length=2000, widget=forms.Textarea(attrs={"rows": 2}), help_text="Recorded in the logbook."
    )

    def __init__(self, *args: Any, steps: list[int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["from_step"].choices = [(step, str(step)) for step in reversed(steps)]

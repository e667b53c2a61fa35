"""Serializers of the fine-tuning API."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from finetune import hyperparameters as hp
from finetune.models import TrainingDataset, TrainingJob


class TrainingDatasetSerializer(serializers.ModelSerializer):
    # Plain strings in the schema: another component already owns the enum name "status".
    status = serializers.CharField(
        help_text="queued, running (being checked and tokenized), succeeded (ready) or failed."
    )
    input_format = serializers.CharField(help_text="jsonl or text.")
    error = serializers.CharField(source="error_message", help_text="Why the dataset was refused.")
    error_line = serializers.IntegerField(allow_null=True, help_text="The 1-based line the refusal names.")
    percent = serializers.FloatField(read_only=True)

    class Meta:
        model = TrainingDataset
        fields = [
            "id",
            "name",
            "checkpoint",
            "input_format",
            "status",
            "size_bytes",
            "bytes_done",
            "percent",
            "doc_count",
            "token_count",
            "error",
            "error_line",
            "created_at",
        ]
        read_only_fields = fields


class DatasetUploadSerializer(serializers.Serializer):
    checkpoint = serializers.IntegerField(help_text="The checkpoint whose tokenizer is used.")
    file = serializers.FileField(help_text='.jsonl (one {"text": ...} per line) or .txt (blank-line separated).')
    name = serializers.CharField(required=False, allow_blank=True, max_length=200)


class TrainingJobSerializer(serializers.ModelSerializer):
    status = serializers.CharField(help_text="queued, running, succeeded, failed or cancelled.")
    phase = serializers.CharField(help_text="While running: materialising, training or storing.")
    error = serializers.CharField(source="error_message", help_text="Why the job failed, was cancelled or is retried.")
    percent = serializers.FloatField(read_only=True)
    owner = serializers.EmailField(source="owner.email", read_only=True)
    result = serializers.PrimaryKeyRelatedField(read_only=True, help_text="The fine-tuned checkpoint, once succeeded.")

    class Meta:
        model = TrainingJob
        fields = [
            "id",
            "owner",
            "base_checkpoint",
            "dataset",
            "status",
            "phase",
            "paused",
            "hyperparameters",
            "tp",
            "gpus",
            "max_hours",
            "step",
            "total_steps",
            "percent",
            "last_loss",
            "last_lr",
            "tokens_per_s",
            "attempts",
            "gpu_seconds",
            "error",
            "exit_code",
            "result",
            "created_at",
            "started_at",
            "heartbeat_at",
            "finished_at",
        ]
        read_only_fields = fields


def _hyperparameters_help() -> str:
    return "; ".join(f"{f.name} (default {f.default}): {f.help}" for f in hp.FIELDS)


class TrainingJobCreateSerializer(serializers.Serializer):
    checkpoint = serializers.IntegerField(help_text="The base checkpoint (of a release you may use).")
    dataset = serializers.IntegerField(help_text="A ready dataset of yours, tokenized for the same release.")
    hyperparameters = serializers.DictField(required=False, default=dict, help_text=_hyperparameters_help())
    tp = serializers.IntegerField(required=False, default=1, min_value=1)
    gpus = serializers.IntegerField(required=False, default=1, min_value=1)
    max_hours = serializers.FloatField(required=False, allow_null=True, default=None)


class CancelSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class LogbookSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    events = serializers.ListField(child=serializers.DictField(), help_text="logbook.jsonl events, oldest first.")


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity: a diverged loss is sent as null."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value

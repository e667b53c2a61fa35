from __future__ import annotations

from rest_framework import serializers

from artifacts.models import Checkpoint, CheckpointFile, ReshardFormat, ReshardJob


class CheckpointFileSerializer(serializers.ModelSerializer):
    class Meta:
        model = CheckpointFile
        fields = ["id", "path", "size", "sha256", "md5"]


class CheckpointSerializer(serializers.ModelSerializer):
    release = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    derived_from = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = Checkpoint
        fields = [
            "id",
            "release",
            "variant",
            "format",
            "tp_size",
            "dtype",
            "state",
            "label",
            "description",
            "derived_from",
            "verified_at",
        ]


class CheckpointDetailSerializer(CheckpointSerializer):
    files = CheckpointFileSerializer(many=True, read_only=True)

    class Meta(CheckpointSerializer.Meta):
        fields = [*CheckpointSerializer.Meta.fields, "files"]


class BundleFileSerializer(serializers.Serializer):
    path = serializers.CharField()
    size = serializers.IntegerField()
    sha256 = serializers.CharField()
    md5 = serializers.CharField()
    url = serializers.URLField(help_text="Signed link, bound to you and your grant; expires at `expires_at`.")


class BundleCheckpointSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    variant = serializers.CharField()
    format = serializers.CharField()
    tp_size = serializers.IntegerField()
    dtype = serializers.CharField()
    label = serializers.CharField()


class ManifestSerializer(serializers.Serializer):
    release = serializers.CharField()
    checkpoint = BundleCheckpointSerializer()
    user = serializers.EmailField()
    grant_id = serializers.IntegerField(allow_null=True)
    issued_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    renewal_url = serializers.URLField()
    files = BundleFileSerializer(many=True)


class ReshardJobSerializer(serializers.ModelSerializer):
    to = serializers.CharField(source="target_format", help_text="native, hf or metaseq.")
    tp = serializers.IntegerField(source="tp_size")
    error = serializers.CharField(source="error_message", help_text="Why the job failed (or is being retried).")
    exit_code = serializers.IntegerField(
        allow_null=True,
        help_text="reshard's exit code of the failure: 2 usage, 3 bad input, 4 verification failed, "
        "5 unsafe pickle, 1 internal.",
    )
    # A plain string in the schema: another component already owns the enum name "status".
    status = serializers.CharField(help_text="queued, running, succeeded, failed or cancelled.")
    cancel_requested_at = serializers.DateTimeField(
        allow_null=True, help_text="When a cancel was asked; a running job stops at its next heartbeat."
    )
    phase = serializers.CharField(help_text="While running: materialising, converting, verifying or storing.")
    percent = serializers.FloatField(read_only=True)
    output = serializers.PrimaryKeyRelatedField(read_only=True, help_text="The new checkpoint, once succeeded.")

    class Meta:
        model = ReshardJob
        fields = [
            "id",
            "source",
            "to",
            "tp",
            "dtype",
            "status",
            "phase",
            "bytes_done",
            "bytes_total",
            "tensors_done",
            "tensors_total",
            "percent",
            "attempts",
            "created_at",
            "started_at",
            "heartbeat_at",
            "finished_at",
            "cancel_requested_at",
            "error",
            "exit_code",
            "output",
        ]
        read_only_fields = fields


class ReshardJobCreateSerializer(serializers.Serializer):
    to = serializers.ChoiceField(choices=ReshardFormat.choices, help_text="Target format.")
    tp = serializers.IntegerField(
        min_value=1,
        max_value=4096,
        required=False,
        allow_null=True,
        help_text="Tensor-parallel parts; default the source's (1 for hf).",
    )
    dtype = serializers.ChoiceField(
        choices=["fp16", "bf16", "fp32", "float16", "bfloat16", "float32"],
        required=False,
        allow_null=True,
        help_text="Default: the source's dtype.",
    )

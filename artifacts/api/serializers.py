from __future__ import annotations

from rest_framework import serializers

from artifacts.models import Checkpoint, CheckpointFile


class CheckpointFileSerializer(serializers.ModelSerializer):
    class Meta:
        model = CheckpointFile
        fields = ["id", "path", "size", "sha256", "md5"]


class CheckpointSerializer(serializers.ModelSerializer):
    release = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    derived_from = serializers.PrimaryKeyRelatedField(read_only=True)

    class Meta:
        model = Checkpoint
        fields = ["id", "release", "variant", "format", "tp_size", "dtype", "state", "label", "description",
                  "derived_from", "verified_at"]


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

"""Rows of the artifacts app: the checkpoint registry, verification jobs and download events."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from jobs.models import Job, JobStatus


class CheckpointFormat(models.TextChoices):
    METASEQ_FSDP = "metaseq-fsdp", "metaseq FSDP shards (checkpoint_last-model_part-*-shard*.pt)"
    METASEQ = "metaseq", "metaseq consolidated (reshard-model_part-*.pt)"
    HF = "hf", "Hugging Face transformers (config.json + safetensors/bin)"
    NATIVE = "native", "OpenRelease native (manifest.json + config.json)"


class CheckpointState(models.TextChoices):
    REGISTERED = "registered", "Registered (not verified yet)"
    VERIFYING = "verifying", "Verifying"
    READY = "ready", "Ready"
    QUARANTINED = "quarantined", "Quarantined"
    RETIRED = "retired", "Retired"


class Checkpoint(models.Model):
    """One set of weight files for a release, in one format and tensor-parallel layout."""

    release = models.ForeignKey("access.Release", on_delete=models.PROTECT, related_name="checkpoints")
    variant = models.CharField(max_length=100, help_text="Short name, unique within the release, e.g. hf-fp16.")
    format = models.CharField(max_length=16, choices=CheckpointFormat.choices)
    tp_size = models.PositiveIntegerField(default=1, help_text="Tensor-parallel parts.")
    dtype = models.CharField(max_length=16, blank=True)
    state = models.CharField(max_length=12, choices=CheckpointState.choices, default=CheckpointState.REGISTERED)
    state_reason = models.TextField(blank=True)
    label = models.CharField(max_length=200, blank=True, help_text='e.g. "random weights (demo)".')
    description = models.TextField(blank=True)
    derived_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="derivatives"
    )
    # The job that produced it, e.g. {"kind": "reshard", "id": 12}; null for imports.
    produced_by_job = models.JSONField(null=True, blank=True)
    source_uri = models.CharField(max_length=1000, blank=True)
    # The parsed --checksums list: {"kind", "unmatched": [names listed but not in the checkpoint]}.
    published_checksums = models.JSONField(null=True, blank=True)
    storage_prefix = models.CharField(max_length=500)
    # A private checkpoint (e.g. a fine-tuning result): only its owner sees and downloads it, under the
    # release's access rules. Null: public to everyone the release allows.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="owned_checkpoints"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    verified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["release__slug", "variant"]
        constraints = [models.UniqueConstraint(fields=["release", "variant"], name="uniq_checkpoint_variant")]

    def __str__(self) -> str:
        return f"{self.release.slug}/{self.variant}"

    @property
    def is_servable(self) -> bool:
        return self.state == CheckpointState.READY


class ChecksumSource(models.TextChoices):
    NONE = "", "None yet"
    PUBLISHED = "published", "Published list"
    FIRST_VERIFICATION = "first_verification", "First verification (trust on first use)"


class CheckpointFile(models.Model):
    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.CASCADE, related_name="files")
    path = models.CharField(max_length=500, help_text="Relative to the checkpoint directory.")
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64, blank=True)
    md5 = models.CharField(max_length=32, blank=True)
    # What the stored bytes must hash to: from a published list, or from the first verification.
    expected_sha256 = models.CharField(max_length=64, blank=True)
    expected_md5 = models.CharField(max_length=32, blank=True)
    expected_source = models.CharField(max_length=20, choices=ChecksumSource.choices, blank=True)
    storage_key = models.CharField(max_length=1000)
    verified_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["checkpoint", "path"]
        constraints = [models.UniqueConstraint(fields=["checkpoint", "path"], name="uniq_checkpoint_file_path")]

    def __str__(self) -> str:
        return f"{self.checkpoint}:{self.path}"

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class VerificationStatus(models.TextChoices):
    # The job statuses (jobs.models.JobStatus), except that "failed" is a verdict (bad bytes found)
    # and "error" means the pass could not finish.
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed (checkpoint quarantined)"
    ERROR = "error", "Error (could not finish)"
    CANCELLED = "cancelled", "Cancelled"


class VerificationJob(Job):
    """One pass hashing every file of a checkpoint; progress is here for operators to watch."""

    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.CASCADE, related_name="verification_jobs")
    status = models.CharField(max_length=10, choices=VerificationStatus.choices, default=VerificationStatus.QUEUED)
    bytes_total = models.BigIntegerField(default=0)
    bytes_hashed = models.BigIntegerField(default=0)
    files_total = models.PositiveIntegerField(default=0)
    files_done = models.PositiveIntegerField(default=0)
    # {"bad_files": [{"path", "problem"}], "checked": n, "published_list": bool, "seconds": float, ...}
    report = models.JSONField(default=dict, blank=True)

    class Meta(Job.Meta):
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"verify #{self.pk} {self.checkpoint} ({self.status})"

    @property
    def percent(self) -> float:
        return 100.0 * self.bytes_hashed / self.bytes_total if self.bytes_total else 0.0


class ReshardFormat(models.TextChoices):
    NATIVE = "native", "OpenRelease native"
    HF = "hf", "Hugging Face transformers"
    METASEQ = "metaseq", "metaseq consolidated parts"


class ReshardJob(Job):
    """One conversion of a ready checkpoint into another format / tensor-parallel layout / dtype.

    `job_key` names the conversion (source, format, tp, dtype); it is unique among jobs that have not
    failed or been cancelled, so asking for the same conversion again returns the queued, running or
    finished job. Phases while running: materialising, converting, verifying, storing.
    """

    source = models.ForeignKey(Checkpoint, on_delete=models.PROTECT, related_name="reshard_jobs")
    target_format = models.CharField(max_length=10, choices=ReshardFormat.choices)
    tp_size = models.PositiveIntegerField(default=1)
    dtype = models.CharField(max_length=16, help_text="float16, bfloat16 or float32.")
    job_key = models.CharField(max_length=200)
    bytes_done = models.BigIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    tensors_done = models.PositiveIntegerField(default=0)
    tensors_total = models.PositiveIntegerField(default=0)
    # `python -m reshard` exit code of the failure (2 usage, 3 bad input, 4 verification, 5 unsafe pickle,
    # 1 internal); null while nothing failed.
    exit_code = models.SmallIntegerField(null=True, blank=True)
    output = models.OneToOneField(
        Checkpoint, null=True, blank=True, on_delete=models.PROTECT, related_name="produced_by_reshard"
    )
    # {"seconds", "parameter_count", "source_format", "architecture", "files", "bytes",
    #  "verified": {"files_checked", "numerics": {...} | null, "numerics_skipped": str | null}}
    report = models.JSONField(default=dict, blank=True)

    class Meta(Job.Meta):
        indexes = [models.Index(fields=["status", "heartbeat_at"])]
        constraints = [
            models.UniqueConstraint(
                fields=["job_key"],
                condition=~models.Q(status__in=[JobStatus.FAILED, JobStatus.CANCELLED]),
                name="uniq_reshard_job_key_unless_failed",
            )
        ]

    def __str__(self) -> str:
        return (
            f"reshard #{self.pk} {self.source_id} -> {self.target_format} tp{self.tp_size} {self.dtype} ({self.status})"
        )

    @property
    def percent(self) -> float:
        return 100.0 * self.bytes_done / self.bytes_total if self.bytes_total else 0.0


class DownloadEvent(models.Model):
    """One redemption of a signed link. `bytes_served` is reserved when serving starts and settled to
    the bytes actually sent when the portal streams the file itself."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="download_events")
    file = models.ForeignKey(CheckpointFile, on_delete=models.PROTECT, related_name="download_events")
    grant = models.ForeignKey(
        "access.Grant", null=True, blank=True, on_delete=models.PROTECT, related_name="download_events"
    )
    status_code = models.PositiveSmallIntegerField()
    bytes_served = models.BigIntegerField(default=0)
    range_start = models.BigIntegerField(null=True, blank=True)
    range_end = models.BigIntegerField(null=True, blank=True)
    via = models.CharField(max_length=16, help_text="portal, x-accel or s3-redirect.")
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["file", "user", "grant"])]

    def __str__(self) -> str:
        return f"{self.user} {self.file} {self.bytes_served}B"

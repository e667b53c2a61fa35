"""Rows of the fine-tuning app. Both are kinds of the one job mechanism (`jobs.models.Job`): a dataset's
validation and tokenization is an `io` job, a training run a `gpu` job."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import models

from jobs.models import Job, JobStatus


class DatasetFormat(models.TextChoices):
    JSONL = "jsonl", 'JSON lines ({"text": ...} per line)'
    TEXT = "text", "Plain text (documents separated by blank lines)"


class TrainingDataset(Job):
    """An uploaded dataset, tokenized with one checkpoint's tokenizer. Job statuses read: queued (waiting
    to be checked), running (checking and tokenizing), succeeded (ready to train on), failed (refused:
    `error_message` says why and `error_line` where)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="training_datasets")
    # Whose tokenizer the tokens come from; training jobs on checkpoints of its release may use it.
    checkpoint = models.ForeignKey("artifacts.Checkpoint", on_delete=models.PROTECT, related_name="+")
    name = models.CharField(max_length=200)
    input_format = models.CharField(max_length=8, choices=DatasetFormat.choices)
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    # Relative to FINETUNE_DIR.
    source_path = models.CharField(max_length=500, blank=True)
    tokens_path = models.CharField(max_length=500, blank=True)
    bytes_done = models.BigIntegerField(default=0)
    doc_count = models.BigIntegerField(default=0)
    token_count = models.BigIntegerField(default=0)
    # The 1-based line of the input the refusal names; null when the file is fine or the fault is elsewhere.
    error_line = models.PositiveIntegerField(null=True, blank=True)

    class Meta(Job.Meta):
        indexes = [models.Index(fields=["status", "heartbeat_at"])]

    def __str__(self) -> str:
        return f"dataset #{self.pk} {self.name}"

    @property
    def is_ready(self) -> bool:
        return self.status == JobStatus.SUCCEEDED

    @property
    def percent(self) -> float:
        if self.is_ready:
            return 100.0
        return 100.0 * self.bytes_done / self.size_bytes if self.size_bytes else 0.0

    @property
    def state_label(self) -> str:
        labels: dict[str, str] = {
            JobStatus.QUEUED: "waiting to be checked",
            JobStatus.RUNNING: "checking and tokenizing",
            JobStatus.SUCCEEDED: "ready",
            JobStatus.FAILED: "refused",
            JobStatus.CANCELLED: "cancelled",
        }
        return labels.get(self.status, self.status)

    def tokens_file(self) -> Path:
        return Path(settings.FINETUNE_DIR) / self.tokens_path


class TrainingJob(Job):
    """One fine-tuning run of `python -m training train` (under torchrun for more than one process) on
    the `gpu` queue. Its run directory (FINETUNE_DIR/runs/job-<id>) keeps the committed checkpoints and
    logbook.jsonl across attempts, so a requeued attempt resumes from the last committed step."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="training_jobs")
    base_checkpoint = models.ForeignKey("artifacts.Checkpoint", on_delete=models.PROTECT, related_name="training_jobs")
    release = models.ForeignKey("access.Release", on_delete=models.PROTECT, related_name="training_jobs")
    # The grant the job runs under (gated releases); it is checked again at every heartbeat.
    grant = models.ForeignKey("access.Grant", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    dataset = models.ForeignKey(TrainingDataset, on_delete=models.PROTECT, related_name="training_jobs")
    # The validated `python -m training train` settings (finetune.hyperparameters.clean).
    hyperparameters = models.JSONField(default=dict)
    tp = models.PositiveSmallIntegerField(default=1)
    gpus = models.PositiveSmallIntegerField(default=1, help_text="Processes (GPUs) of the run; dp = gpus / tp.")
    max_hours = models.FloatField(help_text="Wall-clock limit of one attempt; reserved from the GPU-hours cap.")
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    last_loss = models.FloatField(null=True, blank=True)
    last_lr = models.FloatField(null=True, blank=True)
    tokens_per_s = models.FloatField(null=True, blank=True)
    # GPU-seconds the attempts used (gpus x wall seconds), for the per-user cap.
    gpu_seconds = models.FloatField(default=0.0)
    # An operator's resume: the next attempt passes --resume-from this step; cleared once it resumed.
    resume_from_step = models.PositiveIntegerField(null=True, blank=True)
    # Paused by an operator (cancelled, checkpoints kept, may be resumed).
    paused = models.BooleanField(default=False)
    exit_code = models.SmallIntegerField(null=True, blank=True)
    result = models.OneToOneField(
        "artifacts.Checkpoint", null=True, blank=True, on_delete=models.PROTECT, related_name="produced_by_training"
    )

    class Meta(Job.Meta):
        indexes = [models.Index(fields=["status", "heartbeat_at"]), models.Index(fields=["owner", "status"])]

    def __str__(self) -> str:
        return f"training job #{self.pk}"

    def run_dir(self) -> Path:
        return Path(settings.FINETUNE_DIR) / "runs" / f"job-{self.pk}"

    @property
    def percent(self) -> float:
        return 100.0 * self.step / self.total_steps if self.total_steps else 0.0

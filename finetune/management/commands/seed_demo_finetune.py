"""`manage.py seed_demo_finetune`: one fine-tuning job of the demo researcher on the demo OPT-175B checkpoint
(random weights), so a newcomer sees a job page with a loss curve. Run for real, a few steps on CPU:
the dataset (generated pseudo-word text the demo tokenizer knows) is checked and tokenized here; the job
is queued for the demo's Celery worker (`--run-now` runs it in this process instead). Idempotent: nothing
is done when the researcher already has a fine-tuning job. Development only."""

from __future__ import annotations

import json
import random
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from access.errors import AccessError
from access.models import User
from access.services.audit import RequestMeta
from artifacts.management.commands.seed_demo_checkpoints import VARIANT
from artifacts.models import Checkpoint, CheckpointState
from finetune import runs, services
from finetune.models import TrainingJob
from jobs.models import JobStatus

DEMO_META = RequestMeta(ip="127.0.0.1", user_agent="manage.py seed_demo_finetune")
RESEARCHER = "researcher@demo.local"
RELEASE = "opt-175b"
HYPERPARAMETERS = {"steps": 12, "batch_size": 4, "seq_len": 32, "lr": 2e-3, "warmup_steps": 2, "save_every": 4}


class _Upload:
    def __init__(self, name: str, data: bytes) -> None:
        self.name, self.size, self._data = name, len(data), data

    def chunks(self) -> list[bytes]:
        return [self._data]


def demo_corpus(documents: int = 300, seed: int = 0) -> bytes:
    """JSONL of pseudo-word sentences built from the syllables the demo tokenizer was trained on, with a
    repeated structure the model can learn in a few steps (so the loss falls)."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bdfghjklmnprstvwz" for v in "aeiou"]
    phrases = [" ".join(rng.choice(syllables) + rng.choice(syllables) for _ in range(4)) for _ in range(12)]
    lines = [
        json.dumps({"text": ". ".join(rng.choice(phrases) for _ in range(rng.randint(4, 10))) + "."})
        for _ in range(documents)
    ]
    return ("\n".join(lines) + "\n").encode()


class Command(BaseCommand):
    help = "Seed one fine-tuning job of the demo researcher on the demo checkpoint (development only)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--run-now", action="store_true", help="run the job in this process, not on the worker")

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.PRODUCTION:
            raise CommandError("seed_demo_finetune is for development databases only (PORTAL_ENV=development).")
        owner = User.objects.filter(email=RESEARCHER).first()
        base = Checkpoint.objects.filter(release__slug=RELEASE, variant=VARIANT, state=CheckpointState.READY).first()
        if owner is None or base is None:
            raise CommandError("Run `manage.py seed_demo` first (the demo researcher and checkpoint).")
        existing = TrainingJob.objects.filter(owner=owner).order_by("pk").first()
        if existing is not None:
            self.stdout.write(f"Fine-tuning demo: job #{existing.pk} exists ({existing.status}); kept.")
            return
        try:
            dataset = services.dataset_upload(
                owner=owner,
                checkpoint=base,
                upload=_Upload("demo-phrases.jsonl", demo_corpus()),
                name="demo-phrases.jsonl",
                meta=DEMO_META,
                dispatch=False,
            )
            dataset = runs.dataset_tokenize_run(job_id=dataset.pk) or dataset
            if dataset.status != JobStatus.SUCCEEDED:
                raise CommandError(f"The demo dataset was refused: {dataset.error_message}")
            job = services.training_job_submit(
                owner=owner,
                checkpoint=base,
                dataset=dataset,
                hyperparameters=HYPERPARAMETERS,
                max_hours=0.25,
                meta=DEMO_META,
                dispatch=not options["run_now"],
            )
        except AccessError as error:
            raise CommandError(f"The demo job could not be submitted: {error.message}") from error
        if options["run_now"]:
            job = runs.training_job_run(job_id=job.pk) or job
            self.stdout.write(f"Fine-tuning demo: job #{job.pk} {job.status} at step {job.step}.")
        else:
            self.stdout.write(
                f"Fine-tuning demo: job #{job.pk} queued for the worker ({HYPERPARAMETERS['steps']} steps)."
            )

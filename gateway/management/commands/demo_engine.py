"""`make demo`'s engine wiring (scripts/demo.sh), in two steps around starting the engine:

    python manage.py demo_engine prepare --secret-file var/engine-secrets/demo.secret
        -> writes a random secret (once) and prints the demo checkpoint's directory, to serve;
    python manage.py demo_engine register --url http://127.0.0.1:9100 --secret-file ...
        -> registers that engine as the release's deployment (again only if it changed) and checks it.

Development only: it reads the checkpoint straight from local storage.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from access.errors import AccessError
from access.services.audit import SYSTEM
from artifacts.management.commands.seed_demo_checkpoints import VARIANT
from artifacts.models import Checkpoint, CheckpointState
from artifacts.storage import get_storage
from gateway.models import Deployment
from gateway.services.deployments import deployment_add, deployment_remove, deployments_check_health


def demo_checkpoint(release_slug: str) -> Checkpoint:
    checkpoint = Checkpoint.objects.filter(
        release__slug=release_slug, variant=VARIANT, state=CheckpointState.READY
    ).first()
    if checkpoint is None:
        raise CommandError(f"No ready demo checkpoint for {release_slug}: run `manage.py seed_demo` first.")
    return checkpoint


def checkpoint_directory(checkpoint: Checkpoint) -> Path:
    """The folder holding the checkpoint's files, on local storage (what the engine serves)."""
    storage = get_storage()
    config = checkpoint.files.filter(path="config.json").first()
    if config is None or storage.local_path(config.storage_key) is None:
        raise CommandError("The demo engine needs local storage (ARTIFACTS_STORAGE=local) and a config.json.")
    folder = Path(str(storage.local_path(config.storage_key))).parent
    if not (folder / "tokenizer.json").is_file():
        raise CommandError(f"{folder} has no tokenizer.json: run `manage.py seed_demo_checkpoints` again.")
    return folder


class Command(BaseCommand):
    help = "Prepare and register the demo inference engine (used by scripts/demo.sh)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("step", choices=["prepare", "register"])
        parser.add_argument("--release", default="opt-175b")
        parser.add_argument("--secret-file", required=True)
        parser.add_argument("--url", help="the engine's base URL (register)")

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.PRODUCTION:
            raise CommandError("demo_engine is for development: use `manage.py deployment_add` in production.")
        checkpoint = demo_checkpoint(options["release"])
        secret_file = Path(options["secret_file"])
        if options["step"] == "prepare":
            if not secret_file.is_file() or not secret_file.read_text().strip():
                secret_file.parent.mkdir(parents=True, exist_ok=True)
                secret_file.write_text(secrets.token_urlsafe(32) + "\n")
                secret_file.chmod(0o600)
            self.stdout.write(str(checkpoint_directory(checkpoint)))
            return
        if not options["url"]:
            raise CommandError("register needs --url (the engine's base URL).")
        url = options["url"].rstrip("/")
        current = Deployment.objects.filter(removed_at__isnull=True, replicas__url=url).first()
        if current is not None and (
            current.checkpoint_id != checkpoint.pk or current.secret_file != str(secret_file.resolve())
        ):
            deployment_remove(deployment=current, actor=None, meta=SYSTEM)
            current = None
        if current is None:
            try:
                current = deployment_add(
                    release=checkpoint.release,
                    checkpoint=checkpoint,
                    urls=[url],
                    secret_file=str(secret_file),
                    actor=None,
                    meta=SYSTEM,
                    restrict_secret_dir=False,
                )
            except AccessError as error:
                raise CommandError(error.message) from None
        if current.draining:
            Deployment.objects.filter(pk=current.pk).update(draining=False)
        deployments_check_health()
        replica = current.replicas.get()
        self.stdout.write(
            f"{current}: {replica.url} is {replica.status}{f' ({replica.last_error})' if replica.last_error else ''}"
        )

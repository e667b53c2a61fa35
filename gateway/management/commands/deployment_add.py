"""`python manage.py deployment_add <release-slug> <engine-url> [<engine-url> ...] --checkpoint ID --secret-file F`

Registers engines started with `python -m inference_worker serve ... --secret-file F` (or the same under
`torchrun` for tp > 1) as a deployment of the release, and checks their health once. A private checkpoint
(a fine-tuning result) is served to its owner only, as model `<release-slug>:<variant>`.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from access.errors import AccessError
from access.models import Release
from access.services.audit import SYSTEM
from artifacts.models import Checkpoint
from gateway.models import Replica
from gateway.services.deployments import deployment_add, deployments_check_health


class Command(BaseCommand):
    help = "Register running inference engines (one or more replicas) serving a checkpoint of a release."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("release", help="slug of the release, e.g. opt-175b")
        parser.add_argument("urls", nargs="+", help="base URL of each replica's engine, e.g. http://127.0.0.1:9000")
        parser.add_argument("--checkpoint", required=True, type=int, help="id of the (ready) checkpoint it serves")
        parser.add_argument("--secret-file", required=True, help="the file the engines were started with")
        parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks of each replica (default 1)")
        parser.add_argument("--max-context", type=int, default=None, help="default: learned from the engine")
        parser.add_argument("--no-check", action="store_true", help="do not probe the engines now")

    def handle(self, *args: Any, **options: Any) -> None:
        release = Release.objects.filter(slug=options["release"]).first()
        if release is None:
            known = ", ".join(Release.objects.order_by("slug").values_list("slug", flat=True)) or "none"
            raise CommandError(f"No release {options['release']!r}. Known releases: {known}.")
        checkpoint = Checkpoint.objects.select_related("release", "owner").filter(pk=options["checkpoint"]).first()
        if checkpoint is None:
            raise CommandError(
                f"No checkpoint #{options['checkpoint']}; see the checkpoints page or `import_checkpoint`."
            )
        try:
            deployment = deployment_add(
                release=release,
                checkpoint=checkpoint,
                urls=options["urls"],
                secret_file=options["secret_file"],
                tp_size=options["tp"],
                max_context=options["max_context"],
                actor=None,
                meta=SYSTEM,
                restrict_secret_dir=False,
            )
        except AccessError as error:
            raise CommandError(error.message) from None
        served_to = (
            f"private to {checkpoint.owner.email}" if checkpoint.owner is not None else "every user of the release"
        )
        self.stdout.write(
            f"Added {deployment} with {deployment.replicas.count()} replica(s), "
            f"served as model {deployment.model_id!r} ({served_to})."
        )
        if options["no_check"]:
            return
        deployments_check_health()
        for replica in Replica.objects.filter(deployment=deployment).order_by("pk"):
            detail = f": {replica.last_error}" if replica.last_error else ""
            self.stdout.write(f"  {replica.url}: {replica.status}{detail}")

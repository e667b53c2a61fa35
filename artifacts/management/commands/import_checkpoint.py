"""python manage.py import_checkpoint RELEASE PATH_OR_S3_URI [--format F] [--checksums FILE] [--variant NAME]"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from access.errors import AccessError
from access.models import Release
from artifacts.models import CheckpointFormat
from artifacts.services import imports, verification


class Command(BaseCommand):
    help = (
        "Register a checkpoint directory (local path or s3://bucket/prefix) for a release: files are streamed "
        "into storage when not already there, then a verification job (queue `io`) hashes them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("release", help="Release slug, e.g. opt-175b.")
        parser.add_argument("source", help="Checkpoint directory or s3://bucket/prefix.")
        parser.add_argument("--format", choices=CheckpointFormat.values, help="Skip format detection.")
        parser.add_argument("--checksums", help="Published list: OPT CSV (shard,md5sum), sha256sum or md5sum output.")
        parser.add_argument("--variant", help="Name unique within the release (default: the format).")
        parser.add_argument("--label", default="", help='Shown to users, e.g. "random weights (demo)".')
        parser.add_argument("--description", default="")
        parser.add_argument("--dtype", default="")
        parser.add_argument("--sync", action="store_true", help="Verify in this process instead of queueing.")

    def handle(self, *args: Any, **options: Any) -> None:
        release = Release.objects.filter(slug=options["release"]).first()
        if release is None:
            known = ", ".join(Release.objects.order_by("slug").values_list("slug", flat=True)[:20])
            raise CommandError(
                f"No release {options['release']!r}; known releases: {known or 'none (seed the catalog)'}."
            )
        checksums_text = None
        if options["checksums"]:
            path = Path(options["checksums"])
            if not path.is_file():
                raise CommandError(f"--checksums {path}: no such file.")
            checksums_text = path.read_text(encoding="utf-8", errors="replace")
        try:
            result = imports.checkpoint_import(
                release=release,
                source_uri=options["source"],
                fmt=options["format"],
                checksums_text=checksums_text,
                variant=options["variant"],
                label=options["label"],
                description=options["description"],
                dtype=options["dtype"],
                enqueue=not options["sync"],
            )
        except AccessError as error:
            raise CommandError(f"{error.field + ': ' if error.field else ''}{error.message}") from None
        checkpoint = result.checkpoint
        if result.unchanged:
            self.stdout.write(f"{checkpoint} is unchanged and {checkpoint.state}; nothing to do.")
            return
        self.stdout.write(
            f"Registered {checkpoint} ({checkpoint.format}, tp={checkpoint.tp_size}): "
            f"{len(result.copied)} file(s) copied, {len(result.already_stored)} already in storage."
        )
        if options["sync"]:
            job = verification.verification_enqueue(checkpoint=checkpoint, dispatch=False)
            job = verification.verification_run(job_id=job.pk)
            checkpoint.refresh_from_db()
            self.stdout.write(f"Verification #{job.pk}: {job.status}; checkpoint is {checkpoint.state}.")
            for bad in (job.report or {}).get("bad_files", []):
                self.stdout.write(f"  bad: {bad['path']}: {bad['problem']}")
        elif result.job:
            self.stdout.write(
                f"Verification #{result.job.pk} queued on `io`; watch it at /checkpoints/{checkpoint.pk}/."
            )

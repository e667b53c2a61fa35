"""Importing a checkpoint: stream its files into storage and register them, then queue verification."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from access.errors import Conflict, InvalidInput
from access.models import Release, User
from access.services.audit import SYSTEM, audit_record
from artifacts.checksums import ChecksumListError, match_published, parse_published_sums
from artifacts.models import (
    Checkpoint,
    CheckpointFile,
    CheckpointFormat,
    CheckpointState,
    ChecksumSource,
    DownloadEvent,
    VerificationJob,
)
from artifacts.services.verification import verification_enqueue
from artifacts.sources import Source, SourceError, open_source
from artifacts.storage import StorageError, UnsafeKey, get_storage
from jobs.models import ACTIVE_STATUSES

_VARIANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass
class ImportResult:
    checkpoint: Checkpoint
    job: VerificationJob | None
    copied: list[str] = field(default_factory=list)
    already_stored: list[str] = field(default_factory=list)
    unchanged: bool = False


def _checkpoint_kind(source: Source, fmt: str | None) -> tuple[str, int, str]:
    """(format, tensor-parallel size, dtype or "") of the checkpoint in `source`, as reshard
    detects it from the file names and config.json. A `fmt` given by the operator must agree with
    what reshard finds; it only stands alone for files reshard cannot tell (tp 1, dtype unknown)."""
    import reshard  # loads torch: only the processes that import checkpoints pay for it

    if fmt and fmt not in CheckpointFormat.values:
        raise InvalidInput(f"Unknown format {fmt!r}; use one of {', '.join(CheckpointFormat.values)}.", field="format")
    try:
        detected = reshard.detect_files([item.path for item in source.files], source.read_text, where=source.uri)
    except reshard.ReshardError as error:
        if fmt:
            return fmt, 1, ""
        raise InvalidInput(
            f"{error}. To import it anyway, pass --format {', '.join(CheckpointFormat.values)}.", field="format"
        ) from None
    if fmt and fmt != detected.format:
        raise InvalidInput(
            f"--format {fmt}, but the files are a {detected.format} checkpoint; drop --format.", field="format"
        )
    return detected.format, detected.tp_size, detected.dtype


def checkpoint_import(
    *,
    release: Release,
    source_uri: str,
    fmt: str | None = None,
    checksums_text: str | None = None,
    variant: str | None = None,
    label: str = "",
    description: str = "",
    dtype: str = "",
    actor: User | None = None,
    enqueue: bool = True,
) -> ImportResult:
    """Register the files under `source_uri` as a checkpoint of `release`, streaming each into
    storage unless an object of the same size is already there, then queue verification.

    Re-importing an unchanged, verified checkpoint is a no-op.
    """
    try:
        source = open_source(source_uri)
    except SourceError as error:
        raise InvalidInput(str(error), field="source") from None
    paths = [item.path for item in source.files]
    fmt, tp_size, detected_dtype = _checkpoint_kind(source, fmt)
    published = None
    if checksums_text is not None:
        try:
            published = parse_published_sums(checksums_text)
        except ChecksumListError as error:
            raise InvalidInput(str(error), field="checksums") from None
    variant = variant or fmt
    if not _VARIANT.match(variant):
        raise InvalidInput(
            f"Variant {variant!r}: use letters, digits, '.', '_' or '-' (up to 100), starting with a letter or digit.",
            field="variant",
        )
    dtype = dtype or detected_dtype

    existing = Checkpoint.objects.filter(release=release, variant=variant).first()
    if existing is not None:
        if existing.state == CheckpointState.RETIRED:
            raise Conflict(f"{existing} is retired; import under a new --variant.", field="variant")
        if existing.verification_jobs.filter(status__in=ACTIVE_STATUSES).exists():
            raise Conflict(f"{existing} is being verified; wait for it to finish, then import again.")

    prefix = f"checkpoints/{release.slug}/{variant}"
    storage = get_storage()
    result = ImportResult(checkpoint=existing or Checkpoint(), job=None)
    for item in source.files:
        key = f"{prefix}/{item.path}"
        try:
            if storage.exists(key) and storage.size(key) == item.size:
                result.already_stored.append(item.path)
                continue
            with item.open() as stream:
                storage.write_stream(key, stream, size=item.size)
        except (StorageError, UnsafeKey, OSError) as error:
            raise InvalidInput(f"Could not store {item.path}: {error}", field="source") from None
        result.copied.append(item.path)

    matches: dict[str, dict[str, str]] = {}
    unmatched: list[str] = []
    if published is not None:
        matches, unmatched = match_published(published, paths)

    with transaction.atomic():
        checkpoint, created = Checkpoint.objects.select_for_update().get_or_create(
            release=release,
            variant=variant,
            defaults={"format": fmt, "storage_prefix": prefix, "source_uri": source.uri},
        )
        old_files = {f.path: f for f in checkpoint.files.all()}
        gone = set(old_files) - set(paths)
        if gone and DownloadEvent.objects.filter(file__in=[old_files[p] for p in gone]).exists():
            raise Conflict(
                f"{checkpoint} was downloaded and {len(gone)} of its files are missing from {source.uri}; "
                "import the new file set under a new --variant.",
                field="variant",
            )
        changed = (
            created
            or bool(gone)
            or bool(result.copied)
            or published is not None
            or checkpoint.state != CheckpointState.READY
            or any(item.path not in old_files or old_files[item.path].size != item.size for item in source.files)
        )
        if not changed:
            result.checkpoint, result.unchanged = checkpoint, True
            return result
        CheckpointFile.objects.filter(checkpoint=checkpoint, path__in=gone).delete()
        for item in source.files:
            row = old_files.get(item.path)
            sums = matches.get(item.path, {})
            fresh = row is None or row.size != item.size or item.path in result.copied
            values: dict[str, Any] = {"size": item.size, "storage_key": f"{prefix}/{item.path}", "error": ""}
            if fresh:
                values.update(
                    sha256="",
                    md5="",
                    verified_at=None,
                    expected_sha256="",
                    expected_md5="",
                    expected_source=ChecksumSource.NONE,
                )
            if sums:
                values.update(
                    expected_sha256=sums.get("sha256", ""),
                    expected_md5=sums.get("md5", ""),
                    expected_source=ChecksumSource.PUBLISHED,
                )
            CheckpointFile.objects.update_or_create(checkpoint=checkpoint, path=item.path, defaults=values)
        checkpoint.format = fmt
        checkpoint.tp_size = tp_size
        checkpoint.dtype = dtype or checkpoint.dtype
        checkpoint.label = label or checkpoint.label
        checkpoint.description = description or checkpoint.description
        checkpoint.source_uri = source.uri
        checkpoint.storage_prefix = prefix
        checkpoint.state = CheckpointState.REGISTERED
        checkpoint.state_reason = "Imported; waiting for verification."
        if published is not None:
            checkpoint.published_checksums = {
                "kind": published.kind,
                "unmatched": unmatched,
                "listed": len(published.names()),
            }
        checkpoint.save()
        audit_record(
            actor=actor,
            action="checkpoint.import",
            target=checkpoint,
            meta=SYSTEM,
            after={
                "source": source.uri,
                "format": fmt,
                "files": len(paths),
                "copied": len(result.copied),
                "published_list": published.kind if published else None,
            },
        )
        result.checkpoint = checkpoint
        if enqueue:
            result.job = verification_enqueue(checkpoint=checkpoint, actor=actor)
    return result

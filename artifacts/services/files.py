"""Files of checkpoints that jobs produce or consume (reshard and fine-tuning): a source checkpoint
materialised as a folder, output streamed into storage with its hashes, and the file rows of a new
checkpoint."""

from __future__ import annotations

import hashlib
import os
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from artifacts.models import Checkpoint, CheckpointFile, ChecksumSource
from artifacts.storage import get_storage
from jobs.services import Claim

_CHUNK = 8 * 1024 * 1024
# reshard.formats refuses a config.json over 4 MiB; reading one byte more lets that check see it
# (reshard itself is not imported here: it loads torch).
_CONFIG_READ_BYTES = 4 * 1024 * 1024 + 1

# (path, size, sha256, md5) of one stored file
StoredFile = tuple[str, int, str, str]


class HashingReader:
    """Hashes the bytes as storage reads them, so what was stored is what the manifest lists."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self.sha256.update(data)
        self.md5.update(data)
        return data


def materialise(rows: list[CheckpointFile], folder: Path, claim: Claim[Any]) -> Path:
    """The source checkpoint as a folder reshard can open: symlinks to the stored files (local storage)
    or downloads (S3; a complete download of the right size is kept for the next attempt)."""
    storage = get_storage()
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {row.path for row in rows}
    for path in sorted(folder.rglob("*"), reverse=True):
        relative = path.relative_to(folder).as_posix()
        if (path.is_symlink() or path.is_file()) and relative not in wanted:
            path.unlink()  # leftovers of earlier attempts (partial downloads, files since removed)
    for row in rows:
        claim.progress()  # stop here if the job was cancelled
        target = folder / row.path
        target.parent.mkdir(parents=True, exist_ok=True)
        local = storage.local_path(row.storage_key)
        if local is not None:
            if target.is_symlink() or target.exists():
                target.unlink()
            if not local.is_file():
                raise OSError(f"{row.storage_key} is missing from local storage")
            target.symlink_to(local)
            continue
        if target.is_file() and not target.is_symlink() and target.stat().st_size == row.size:
            continue
        partial = target.with_name(f".{target.name}.part")
        stream = storage.open_read(row.storage_key)
        try:
            with open(partial, "wb") as out:
                while chunk := stream.read(_CHUNK):
                    out.write(chunk)
        finally:
            stream.close()
        if partial.stat().st_size != row.size:
            raise OSError(f"downloaded {partial.stat().st_size} bytes of {row.storage_key}, expected {row.size}")
        os.replace(partial, target)
    return folder


def create_checkpoint_files(checkpoint: Checkpoint, *, prefix: str, stored: list[StoredFile], now: datetime) -> None:
    """The file rows of a checkpoint a job produced and hashed as it stored them: verified at `now`,
    their first hashes the expected ones."""
    CheckpointFile.objects.bulk_create(
        [
            CheckpointFile(
                checkpoint=checkpoint,
                path=path,
                size=size,
                sha256=sha256,
                md5=md5,
                expected_sha256=sha256,
                expected_md5=md5,
                expected_source=ChecksumSource.FIRST_VERIFICATION,
                storage_key=f"{prefix}/{path}",
                verified_at=now,
            )
            for path, size, sha256, md5 in stored
        ]
    )


def read_stored_text(storage_key: str) -> str:
    """A small stored file (a checkpoint's config.json) as text, cut one byte past reshard's limit."""
    stream = get_storage().open_read(storage_key)
    try:
        return stream.read(_CONFIG_READ_BYTES).decode("utf-8", errors="replace")
    finally:
        stream.close()

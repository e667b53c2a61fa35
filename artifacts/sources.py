"""Where an import reads a checkpoint from: a local directory or `s3://bucket/prefix`.

Every file's path relative to the source must be clean (no `..`, not absolute), and a symlink
whose target lies outside the source directory is refused, so an import can never read outside
what the operator named.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from django.conf import settings

from artifacts.storage import UnsafeKey, check_relative_path

IGNORED_NAMES = {".DS_Store"}


class SourceError(ValueError):
    """The import source is missing, empty or unsafe; the message says which file and why."""


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative, clean
    size: int
    open: Callable[[], IO[bytes]]


def _open_binary(path: Path) -> IO[bytes]:
    return path.open("rb")


@dataclass(frozen=True)
class Source:
    uri: str
    files: list[SourceFile]

    def read_text(self, path: str, limit: int = 1 << 20) -> str:
        for item in self.files:
            if item.path == path:
                with item.open() as stream:
                    return stream.read(limit).decode("utf-8", errors="replace")
        raise FileNotFoundError(path)


def open_source(uri: str) -> Source:
    if uri.startswith("s3://"):
        return _s3_source(uri)
    if "://" in uri:
        raise SourceError(f"{uri!r}: give a local directory or an s3://bucket/prefix URI.")
    return _local_source(uri)


def _local_source(raw: str) -> Source:
    root = Path(raw).expanduser()
    if not root.is_dir():
        raise SourceError(f"{raw!r} is not a directory; give the checkpoint directory.")
    root = root.resolve()
    allowed = [Path(p).resolve() for p in settings.ARTIFACTS_IMPORT_ROOTS]
    if allowed and not any(root.is_relative_to(a) for a in allowed):
        raise SourceError(
            f"{root} is outside the import roots ({', '.join(map(str, allowed))}); "
            "move the checkpoint there or extend ARTIFACTS_IMPORT_ROOTS."
        )
    files: list[SourceFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        here = Path(dirpath)
        for name in dirnames:
            if (here / name).is_symlink():
                raise SourceError(f"{(here / name).relative_to(root)} is a symlinked directory; copy it in instead.")
        for name in sorted(filenames):
            if name in IGNORED_NAMES:
                continue
            path = here / name
            relative = path.relative_to(root).as_posix()
            try:
                relative = check_relative_path(relative, what="file path")
            except UnsafeKey as error:
                raise SourceError(str(error)) from None
            target = path.resolve()
            if not target.is_relative_to(root):
                raise SourceError(f"{relative} is a symlink to {target}, outside {root}; refused.")
            if not target.is_file():
                raise SourceError(f"{relative} is not a regular file.")
            files.append(SourceFile(path=relative, size=target.stat().st_size, open=partial(_open_binary, target)))
    if not files:
        raise SourceError(f"{root} holds no files.")
    return Source(uri=str(root), files=files)


def _s3_source(uri: str) -> Source:
    from artifacts.storage import S3Storage, get_storage

    parsed = urlparse(uri)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    if not bucket:
        raise SourceError(f"{uri!r} names no bucket; use s3://bucket/prefix.")
    if prefix:
        try:
            check_relative_path(prefix, what="S3 prefix")
        except UnsafeKey as error:
            raise SourceError(str(error)) from None
    storage = get_storage()
    if isinstance(storage, S3Storage):
        client = storage.client
    else:
        client = S3Storage(
            bucket=bucket,
            endpoint_url=settings.S3_ENDPOINT_URL,
            region=settings.AWS_REGION,
            access_key=settings.AWS_ACCESS_KEY_ID,
            secret_key=settings.AWS_SECRET_ACCESS_KEY,
        ).client
    files: list[SourceFile] = []
    paginator = client.get_paginator("list_objects_v2")
    try:
        pages = list(paginator.paginate(Bucket=bucket, Prefix=f"{prefix}/" if prefix else ""))
    except Exception as error:  # noqa: BLE001 - botocore raises many kinds; say which bucket
        raise SourceError(f"Cannot list {uri}: {error}") from None
    for page in pages:
        for item in page.get("Contents", []):
            key = item["Key"]
            relative = key[len(prefix) + 1 :] if prefix else key
            if relative.endswith("/") or relative.rsplit("/", 1)[-1] in IGNORED_NAMES:
                continue
            try:
                relative = check_relative_path(relative, what=f"S3 key {key!r}")
            except UnsafeKey as error:
                raise SourceError(str(error)) from None

            def opener(key: str = key) -> Any:
                return client.get_object(Bucket=bucket, Key=key)["Body"]

            files.append(SourceFile(path=relative, size=int(item["Size"]), open=opener))
    if not files:
        raise SourceError(f"{uri} holds no objects.")
    return Source(uri=uri, files=sorted(files, key=lambda f: f.path))

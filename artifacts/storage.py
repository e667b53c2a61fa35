"""Object storage behind one small interface, with a local-disk and an S3 implementation.

Keys are relative POSIX paths (`checkpoints/opt-125m/hf/model.safetensors`). Both backends refuse
keys that could escape their root (`..`, absolute paths, backslashes, empty parts), and the local
backend also refuses symlinks that resolve outside its root. Writes are atomic: bytes go to a
temporary key first and only a complete object is renamed (local) or copied (S3) into place, so a
reader never sees a half-written object under its final key.

`get_storage()` builds the backend that settings name (ARTIFACTS_STORAGE=local|s3).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from django.conf import settings

_SAFE_PART = re.compile(r"^[A-Za-z0-9._+=@-]+$")
COPY_BUFFER = 8 * 1024 * 1024


class StorageError(Exception):
    """A storage operation failed; the message names the key and what to do."""


class UnsafeKey(StorageError):
    """A key or path that could escape the storage root."""


def check_relative_path(value: str, *, what: str = "path") -> str:
    """Return `value` as a clean relative POSIX path or raise UnsafeKey saying why.

    Refuses absolute paths, `..` and `.` parts, backslashes, empty parts and characters outside a
    conservative set (so keys are also safe to print into shell scripts and headers).
    """
    if not isinstance(value, str) or not value:
        raise UnsafeKey(f"The {what} is empty.")
    if value.startswith("/") or value.startswith("\\") or re.match(r"^[A-Za-z]:", value):
        raise UnsafeKey(f"The {what} {value!r} is absolute; give a path relative to the checkpoint directory.")
    if "\\" in value or "\x00" in value:
        raise UnsafeKey(f"The {what} {value!r} contains a backslash or NUL byte.")
    parts = value.split("/")
    for part in parts:
        if part in {"", ".", ".."}:
            raise UnsafeKey(
                f"The {what} {value!r} has an empty, '.' or '..' part; paths may not leave their directory."
            )
        if not _SAFE_PART.match(part):
            raise UnsafeKey(f"The {what} {value!r} has characters outside A-Z a-z 0-9 . _ + = @ -; rename the file.")
    return "/".join(parts)


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class Storage(Protocol):
    kind: str

    def open_read(self, key: str, *, start: int = 0, end: int | None = None) -> BinaryIO:
        """A readable binary stream over bytes [start, end] (inclusive; end=None: to the end)."""

    def write_stream(self, key: str, stream: IO[bytes], *, size: int | None = None) -> int:
        """Write `stream` to `key` atomically; return the number of bytes written."""

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def delete(self, key: str) -> None: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def presigned_url(
        self, key: str, *, expires_in: int, filename: str | None = None, range_header: str | None = None
    ) -> str | None:
        """A time-limited GET URL (S3), or None where the portal serves the bytes itself (local).
        With `range_header`, the URL is good only for a request that sends that very Range header."""

    def local_path(self, key: str) -> Path | None:
        """The file on disk (local), or None (S3)."""


# --- Local disk -------------------------------------------------------------------------------


class _RangeReader:
    """A file limited to [start, end]; used by the local backend's open_read."""

    def __init__(self, handle: BinaryIO, start: int, end: int) -> None:
        self._handle = handle
        self._remaining = end - start + 1
        handle.seek(start)

    def read(self, n: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        n = self._remaining if n is None or n < 0 else min(n, self._remaining)
        data = self._handle.read(n)
        self._remaining -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        if self._remaining <= 0:
            return 0
        if len(view) > self._remaining:
            view = view[: self._remaining]
        count = self._handle.readinto(view)  # type: ignore[attr-defined]
        self._remaining -= count or 0
        return count or 0

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> _RangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalStorage:
    kind = "local"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, key: str) -> Path:
        """The path of `key` under the root; refuses keys and symlinks that lead outside it."""
        key = check_relative_path(key, what="storage key")
        path = self.root / key
        resolved = path.resolve()
        if not resolved.is_relative_to(self.root):
            raise UnsafeKey(f"The storage key {key!r} resolves outside the storage root (a symlink?); refused.")
        return path

    def local_path(self, key: str) -> Path | None:
        return self.path_for(key).resolve()

    def open_read(self, key: str, *, start: int = 0, end: int | None = None) -> BinaryIO:
        path = self.path_for(key)
        try:
            handle = open(path.resolve(), "rb")  # noqa: SIM115 (closed by the caller)
        except FileNotFoundError:
            raise StorageError(f"No object {key!r} in local storage ({self.root}).") from None
        if start == 0 and end is None:
            return handle
        size = os.fstat(handle.fileno()).st_size
        return _RangeReader(handle, start, size - 1 if end is None else end)  # type: ignore[return-value]

    def write_stream(self, key: str, stream: IO[bytes], *, size: int | None = None) -> int:
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.parent / f".{path.name}.{uuid.uuid4().hex}.part"
        written = 0
        try:
            with open(temp, "wb") as out:
                while chunk := stream.read(COPY_BUFFER):
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size is not None and written != size:
                raise StorageError(
                    f"Wrote {written} bytes to {key!r} but expected {size}; the source changed or broke."
                )
            os.replace(temp, path)  # atomic on POSIX: readers see the old object or the whole new one
        finally:
            temp.unlink(missing_ok=True)
        return written

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self.path_for(key).stat().st_size
        except FileNotFoundError:
            raise StorageError(f"No object {key!r} in local storage ({self.root}).") from None

    def delete(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self.path_for(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.endswith(".part"):
                yield ObjectInfo(key=path.relative_to(self.root).as_posix(), size=path.stat().st_size)

    def presigned_url(
        self, key: str, *, expires_in: int, filename: str | None = None, range_header: str | None = None
    ) -> str | None:
        return None


# --- S3 ---------------------------------------------------------------------------------------


class S3Storage:
    kind = "s3"

    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        multipart_threshold: int = 64 * 1024 * 1024,
        multipart_chunksize: int = 64 * 1024 * 1024,
        prefix: str = "",
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if not bucket:
            raise StorageError("S3 storage needs a bucket: set S3_BUCKET.")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url or None,
            region_name=region or None,
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
            config=Config(
                signature_version="s3v4",
                retries={"max_attempts": 5, "mode": "standard"},
                s3={"addressing_style": "path"},
            ),
        )
        self.transfer = TransferConfig(
            multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize, max_concurrency=4
        )

    def _key(self, key: str) -> str:
        key = check_relative_path(key, what="storage key")
        return f"{self.prefix}/{key}" if self.prefix else key

    def local_path(self, key: str) -> Path | None:
        return None

    def open_read(self, key: str, *, start: int = 0, end: int | None = None) -> BinaryIO:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if start or end is not None:
            params["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            return self.client.get_object(**params)["Body"]
        except self.client.exceptions.NoSuchKey:
            raise StorageError(f"No object {key!r} in bucket {self.bucket}.") from None

    def write_stream(self, key: str, stream: IO[bytes], *, size: int | None = None) -> int:
        final = self._key(key)
        temp = f"{final}.{uuid.uuid4().hex}.part"
        counter = _CountingReader(stream)
        try:
            # Multipart above the threshold (TransferConfig); the object appears only when complete.
            self.client.upload_fileobj(counter, self.bucket, temp, Config=self.transfer)
            if size is not None and counter.count != size:
                raise StorageError(f"Wrote {counter.count} bytes to {key!r} but expected {size}; the source changed.")
            self.client.copy({"Bucket": self.bucket, "Key": temp}, self.bucket, final, Config=self.transfer)
        finally:
            self.client.delete_object(Bucket=self.bucket, Key=temp)
        return counter.count

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self.client.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        return True

    def size(self, key: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except self.client.exceptions.ClientError:
            raise StorageError(f"No object {key!r} in bucket {self.bucket}.") from None

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        full = self._key(prefix.rstrip("/")) + "/" if prefix.strip("/") else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for item in page.get("Contents", []):
                if not item["Key"].endswith(".part"):
                    yield ObjectInfo(key=item["Key"][strip:], size=int(item["Size"]))

    def presigned_url(
        self, key: str, *, expires_in: int, filename: str | None = None, range_header: str | None = None
    ) -> str | None:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        if range_header:
            params["Range"] = range_header  # a signed header (X-Amz-SignedHeaders=host;range)
        return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in)


class _CountingReader:
    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._stream.read(n)
        self.count += len(data)
        return data


# --- Choosing the backend ---------------------------------------------------------------------

_cache: dict[tuple[Any, ...], Storage] = {}


def _config() -> tuple[Any, ...]:
    return (
        settings.ARTIFACTS_STORAGE,
        str(settings.ARTIFACTS_LOCAL_ROOT),
        settings.S3_BUCKET,
        settings.S3_ENDPOINT_URL,
        settings.AWS_REGION,
        settings.AWS_ACCESS_KEY_ID,
        settings.AWS_SECRET_ACCESS_KEY,
        settings.ARTIFACTS_S3_MULTIPART_THRESHOLD_MB,
    )


def get_storage() -> Storage:
    """The backend settings name; rebuilt when the settings change (tests switch backends)."""
    config = _config()
    storage = _cache.get(config)
    if storage is None:
        if settings.ARTIFACTS_STORAGE == "s3":
            chunk = settings.ARTIFACTS_S3_MULTIPART_THRESHOLD_MB * 1024 * 1024
            storage = S3Storage(
                bucket=settings.S3_BUCKET,
                endpoint_url=settings.S3_ENDPOINT_URL,
                region=settings.AWS_REGION,
                access_key=settings.AWS_ACCESS_KEY_ID,
                secret_key=settings.AWS_SECRET_ACCESS_KEY,
                multipart_threshold=chunk,
                multipart_chunksize=chunk,
            )
        else:
            storage = LocalStorage(settings.ARTIFACTS_LOCAL_ROOT)
        _cache.clear()
        _cache[config] = storage
    return storage

"""Both storage backends behind one interface (S3 against a real moto server)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

from artifacts.storage import LocalStorage, StorageError, UnsafeKey, get_storage


class Breaks(io.RawIOBase):
    """A source that fails half-way, like a dropped network read."""

    def __init__(self) -> None:
        self.sent = False

    def read(self, n: int = -1) -> bytes:
        if self.sent:
            raise OSError("connection reset")
        self.sent = True
        return b"x" * 1000


def test_round_trip_and_ranges(backend: str) -> None:
    storage = get_storage()
    assert storage.kind == backend
    data = os.urandom(300_000)
    assert storage.write_stream("a/b/blob.bin", io.BytesIO(data), size=len(data)) == len(data)
    assert storage.exists("a/b/blob.bin") and storage.size("a/b/blob.bin") == len(data)
    with storage.open_read("a/b/blob.bin", start=1000, end=1999) as stream:
        assert stream.read() == data[1000:2000]
    with storage.open_read("a/b/blob.bin") as stream:
        assert stream.read() == data
    assert [(o.key, o.size) for o in storage.list("a")] == [("a/b/blob.bin", len(data))]
    storage.delete("a/b/blob.bin")
    assert not storage.exists("a/b/blob.bin")


def test_failed_write_leaves_nothing_visible(backend: str) -> None:
    storage = get_storage()
    with pytest.raises((OSError, StorageError, Exception)):
        storage.write_stream("x/partial.bin", Breaks())  # type: ignore[arg-type]
    assert not storage.exists("x/partial.bin")
    assert list(storage.list("x")) == []
    with pytest.raises(StorageError):
        storage.write_stream("x/short.bin", io.BytesIO(b"abc"), size=10)
    assert not storage.exists("x/short.bin")


@pytest.mark.parametrize("key", ["../escape", "/abs/key", "a/../../b"])
def test_traversal_refused(backend: str, key: str) -> None:
    storage = get_storage()
    for call in (
        lambda: storage.exists(key),
        lambda: storage.open_read(key),
        lambda: storage.write_stream(key, io.BytesIO(b"x")),
    ):
        with pytest.raises(UnsafeKey):
            call()


def test_symlink_escaping_the_root_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    storage = LocalStorage(tmp_path / "root")
    (storage.root / "link").symlink_to(secret)
    (storage.root / "dir").symlink_to(tmp_path)
    with pytest.raises(UnsafeKey, match="outside"):
        storage.open_read("link")
    with pytest.raises(UnsafeKey):
        storage.exists("dir/secret.txt")


def test_s3_multipart_upload(settings: Any, moto_endpoint: str) -> None:
    from tests.artifacts.conftest import use_s3

    use_s3(settings, moto_endpoint)
    settings.ARTIFACTS_S3_MULTIPART_THRESHOLD_MB = 5  # S3's minimum part size
    storage = get_storage()
    data = os.urandom(12 * 1024 * 1024)
    storage.write_stream("big.bin", io.BytesIO(data), size=len(data))
    head = storage.client.head_object(Bucket=storage.bucket, Key="big.bin")  # type: ignore[attr-defined]
    assert head["ContentLength"] == len(data)
    with storage.open_read("big.bin", start=len(data) - 5) as stream:
        assert stream.read() == data[-5:]

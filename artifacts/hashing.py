"""Streaming SHA-256 + MD5 in one pass, files in parallel. Plain Python: no Django.

hashlib releases the GIL for buffers over 2 KiB, so threads hash on every core; one reused buffer
per file keeps memory flat (workers x BUFFER_SIZE).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import IO, Any

BUFFER_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class FileDigest:
    name: str
    size: int
    sha256: str
    md5: str


@dataclass(frozen=True)
class HashFailure:
    name: str
    error: str


def hash_stream(
    stream: IO[bytes], *, on_bytes: Callable[[int], None] | None = None, buffer_size: int = BUFFER_SIZE
) -> tuple[str, str, int]:
    """(sha256 hex, md5 hex, bytes read) of everything `stream` yields."""
    sha256 = hashlib.sha256()
    md5 = hashlib.md5(usedforsecurity=False)
    total = 0
    readinto = getattr(stream, "readinto", None)
    if readinto is not None:
        buffer = bytearray(buffer_size)
        view = memoryview(buffer)
        while True:
            count = readinto(view)
            if not count:
                break
            chunk = view[:count]
            sha256.update(chunk)
            md5.update(chunk)
            total += count
            if on_bytes:
                on_bytes(count)
    else:
        while data := stream.read(buffer_size):
            sha256.update(data)
            md5.update(data)
            total += len(data)
            if on_bytes:
                on_bytes(len(data))
    return sha256.hexdigest(), md5.hexdigest(), total


class Progress:
    """Counters shared by the hashing threads; read by whoever reports progress."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes_hashed = 0
        self.files_done = 0

    def add_bytes(self, count: int) -> None:
        with self._lock:
            self.bytes_hashed += count

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1


def hash_files(
    items: Iterable[tuple[str, Callable[[], Any]]],
    *,
    workers: int = 0,
    progress: Progress | None = None,
    on_tick: Callable[[Progress], None] | None = None,
    tick_seconds: float = 1.0,
) -> tuple[list[FileDigest], list[HashFailure]]:
    """Hash each (name, opener) in parallel. `opener()` returns a readable binary stream.

    `on_tick(progress)` runs in the calling thread about every `tick_seconds` (that is where a
    heartbeat row may be written: the hashing threads never touch the database).
    """
    progress = progress or Progress()
    workers = workers or os.cpu_count() or 1

    def one(name: str, opener: Callable[[], Any]) -> FileDigest:
        with opener() as stream:
            sha256, md5, size = hash_stream(stream, on_bytes=progress.add_bytes)
        progress.file_done()
        return FileDigest(name=name, size=size, sha256=sha256, md5=md5)

    digests: list[FileDigest] = []
    failures: list[HashFailure] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hash") as pool:
        futures: dict[Future[FileDigest], str] = {pool.submit(one, name, opener): name for name, opener in items}
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, timeout=tick_seconds, return_when=FIRST_COMPLETED)
                for future in done:
                    try:
                        digests.append(future.result())
                    except Exception as error:  # noqa: BLE001 - every unreadable file goes in the report
                        progress.file_done()
                        failures.append(HashFailure(name=futures[future], error=f"{type(error).__name__}: {error}"))
                if on_tick:
                    on_tick(progress)
        except BaseException:
            # on_tick stopped the pass (a cancelled job) or a time limit hit: start no further file.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return digests, failures

"""Reading an engine's shared secret from its file. The secret is never stored in the database nor shown;
a deployment row holds only the file's path."""

from __future__ import annotations

import os
import threading
from pathlib import Path


class SecretFileError(ValueError):
    """The secret file is missing, unreadable or empty. The message names the file, never its content."""


_cache: dict[str, tuple[tuple[int, int], str]] = {}
_lock = threading.Lock()


def read_engine_secret(path: str | os.PathLike[str]) -> str:
    """The stripped content of the secret file, re-read when the file changes (an operator rotated it)."""
    name = str(path)
    try:
        stat = os.stat(name)
    except OSError as error:
        raise SecretFileError(f"Engine secret file {name}: {error.strerror or error}.") from None
    stamp = (stat.st_mtime_ns, stat.st_size)
    with _lock:
        cached = _cache.get(name)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        secret = Path(name).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise SecretFileError(f"Engine secret file {name} is unreadable ({type(error).__name__}).") from None
    if not secret:
        raise SecretFileError(f"Engine secret file {name} is empty: write the engine's secret into it.")
    if any(ch in secret for ch in "\r\n"):
        raise SecretFileError(f"Engine secret file {name} holds more than one line: keep only the secret.")
    with _lock:
        _cache[name] = (stamp, secret)
    return secret

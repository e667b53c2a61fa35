"""A dependency-free progress bar for stderr (reshard must run where only torch is installed)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Callable as a ``convert(progress=...)`` callback: (bytes_done, bytes_total, tensors_done,
    tensors_total). Redraws at most ~5 times a second; plain lines when stderr is not a terminal."""

    def __init__(self, label: str = "convert", stream: TextIO | None = None, width: int = 30) -> None:
        self.label, self.stream, self.width = label, stream or sys.stderr, width
        self.started = time.monotonic()
        self._last = 0.0
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, bytes_done: int, bytes_total: int, tensors_done: int, tensors_total: int) -> None:
        now = time.monotonic()
        final = tensors_done >= tensors_total
        if not final and now - self._last < (0.2 if self._tty else 5.0):
            return
        self._last = now
        frac = bytes_done / bytes_total if bytes_total else 1.0
        filled = int(frac * self.width)
        elapsed = now - self.started
        rate = bytes_done / elapsed / 2**20 if elapsed > 0 else 0.0
        line = (
            f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {frac * 100:5.1f}% "
            f"{bytes_done / 2**20:,.0f}/{bytes_total / 2**20:,.0f} MiB {tensors_done}/{tensors_total} tensors "
            f"{rate:,.0f} MiB/s {elapsed:,.1f}s"
        )
        if self._tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

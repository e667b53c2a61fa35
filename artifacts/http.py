"""HTTP Range and conditional-request rules for file downloads (RFC 9110 §13, §14), single range."""

from __future__ import annotations

import re
from dataclasses import dataclass

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(ValueError):
    pass


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """None: serve the whole file (no Range, or another unit). Raises RangeNotSatisfiable (416).

    Forms: `bytes=a-b`, `bytes=a-`, `bytes=-n`. Several ranges are refused too: clients resume with one.
    """
    if not header:
        return None
    header = header.strip()
    if not header.lower().startswith("bytes="):
        return None
    match = _RANGE.match(header.replace(" ", ""))
    if not match:
        raise RangeNotSatisfiable(f"Range {header[:60]!r} is not one `bytes=a-b`, `bytes=a-` or `bytes=-n` range.")
    first, last = match.group(1), match.group(2)
    if first == "" and last == "":
        raise RangeNotSatisfiable("Range `bytes=-` names no bytes.")
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable("Range asks for the last 0 bytes.")
        return ByteRange(max(size - suffix, 0), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size:
        raise RangeNotSatisfiable(f"Range starts at byte {start} but the file has {size} bytes.")
    if end < start:
        raise RangeNotSatisfiable(f"Range {header!r} ends before it starts.")
    return ByteRange(start, min(end, size - 1))


def etag_matches(header: str | None, etag: str, *, weak: bool) -> bool:
    """Does an If-None-Match (weak comparison) or If-Range (strong) header name `etag`?"""
    if not header:
        return False
    header = header.strip()
    if header == "*":
        return True
    for candidate in (part.strip() for part in header.split(",")):
        if candidate.startswith("W/"):
            if not weak:
                continue
            candidate = candidate[2:]
        if candidate == etag:
            return True
    return False

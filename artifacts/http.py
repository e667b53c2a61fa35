"""HTTP Range and conditional-request rules for file downloads (RFC 9110 §13, §14), single range."""

from __future__ import annotations

import re
from dataclasses import dataclass

# One range-spec of a `bytes` range set: `first-last`, `first-` or `-suffix` (RFC 9110 §14.1.2).
# ASCII digits only: `\d` would also take other scripts' digits, which int() reads.
_SPEC = re.compile(r"([0-9]*)-([0-9]*)", re.ASCII)
# Positions longer than this are beyond any file (and int64); comparing a stand-in of the same effect
# keeps int() away from numbers of thousands of digits, which it refuses with ValueError.
_MAX_DIGITS = 20
_BEYOND_ANY_FILE = 10**_MAX_DIGITS


class RangeNotSatisfiable(ValueError):
    pass


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def _position(digits: str) -> int:
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= _MAX_DIGITS else _BEYOND_ANY_FILE


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """None: serve the whole file (no Range, or another unit). Raises RangeNotSatisfiable (416).

    Forms: `bytes=a-b`, `bytes=a-`, `bytes=-n`; the unit is case-insensitive. Several ranges are
    refused too: clients resume with one, and a set of many is the denial of service RFC 9110 §14.2
    lets a server reject.
    """
    if not header:
        return None
    unit, equals, range_set = header.strip().partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    shown = header.strip()[:60]
    specs = range_set.replace(" ", "").replace("\t", "")
    if "," in specs:
        raise RangeNotSatisfiable(f"Range {shown!r} asks for several ranges; ask for one `bytes=a-b` at a time.")
    match = _SPEC.fullmatch(specs)
    if not match:
        raise RangeNotSatisfiable(f"Range {shown!r} is not one `bytes=a-b`, `bytes=a-` or `bytes=-n` range.")
    first, last = match.group(1), match.group(2)
    if first == "" and last == "":
        raise RangeNotSatisfiable("Range `bytes=-` names no bytes.")
    if first == "":
        suffix = _position(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable("Range asks for the last 0 bytes.")
        return ByteRange(max(size - suffix, 0), size - 1)
    start = _position(first)
    end = _position(last) if last else size - 1
    if start >= size:
        raise RangeNotSatisfiable(f"Range starts at byte {first[:30]} but the file has {size} bytes.")
    if end < start:
        raise RangeNotSatisfiable(f"Range {shown!r} ends before it starts.")
    return ByteRange(start, min(end, size - 1))


# A single range in the spelling every client sends and every server reads alike.
_PLAIN_RANGE = re.compile(r"bytes=(?:[0-9]{1,19}-[0-9]{0,19}|-[0-9]{1,19})", re.ASCII)


def is_plain_range(header: str | None) -> bool:
    return bool(header and _PLAIN_RANGE.fullmatch(header))


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

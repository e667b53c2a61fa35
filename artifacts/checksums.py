"""Published checksum lists. Plain Python: no Django, no I/O. (What format a checkpoint is in,
reshard decides: `reshard.detect_files`.)

Checksum formats (auto-detected):
- OPT's CSV: a `shard,md5sum` header (optional) then `file,md5` rows;
- `sha256sum` output: `<64 hex>  name` (or ` *name` in binary mode);
- `md5sum` output: `<32 hex>  name`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from artifacts.storage import UnsafeKey, check_relative_path

_HEX = re.compile(r"^[0-9a-fA-F]+$")
_SUM_LINE = re.compile(r"^([0-9a-fA-F]{32}|[0-9a-fA-F]{64}) [ *](.+)$")


class ChecksumListError(ValueError):
    """The published list cannot be read; the message names the line."""


@dataclass
class PublishedSums:
    kind: str  # "opt-csv", "sha256sum", "md5sum"
    sha256: dict[str, str] = field(default_factory=dict)
    md5: dict[str, str] = field(default_factory=dict)

    def names(self) -> set[str]:
        return set(self.sha256) | set(self.md5)

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "sha256": self.sha256, "md5": self.md5}


def _clean_name(raw: str, line_no: int) -> str:
    name = raw.strip()
    name = name.removeprefix("./")
    try:
        return check_relative_path(name, what=f"file name on line {line_no} of the checksum list")
    except UnsafeKey as error:
        raise ChecksumListError(str(error)) from None


def parse_published_sums(text: str) -> PublishedSums:
    lines = [
        (n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.startswith("#")
    ]
    if not lines:
        raise ChecksumListError("The checksum list is empty.")
    first = lines[0][1]
    if "," in first:
        return _parse_opt_csv(lines)
    result: PublishedSums | None = None
    for line_no, line in lines:
        match = _SUM_LINE.match(line)
        if not match:
            raise ChecksumListError(
                f"Line {line_no} of the checksum list is neither `sha256sum`/`md5sum` output nor CSV: {line[:80]!r}."
            )
        digest, name = match.group(1).lower(), _clean_name(match.group(2), line_no)
        kind = "sha256sum" if len(digest) == 64 else "md5sum"
        if result is None:
            result = PublishedSums(kind=kind)
        elif result.kind != kind:
            raise ChecksumListError(f"Line {line_no} mixes MD5 and SHA-256 sums; give one list per algorithm.")
        (result.sha256 if kind == "sha256sum" else result.md5)[name] = digest
    assert result is not None
    return result


def _parse_opt_csv(lines: list[tuple[int, str]]) -> PublishedSums:
    result = PublishedSums(kind="opt-csv")
    for line_no, line in lines:
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != 2:
            raise ChecksumListError(f"Line {line_no} of the CSV has {len(cells)} cells; expected `shard,md5sum`.")
        name, digest = cells
        if line_no == lines[0][0] and not _HEX.match(digest):
            continue  # the header row
        if not _HEX.match(digest) or len(digest) not in (32, 64):
            raise ChecksumListError(f"Line {line_no}: {digest[:70]!r} is not an MD5 or SHA-256 hex digest.")
        clean = _clean_name(name, line_no)
        (result.md5 if len(digest) == 32 else result.sha256)[clean] = digest.lower()
    if not result.names():
        raise ChecksumListError("The CSV checksum list has a header but no rows.")
    return result


def match_published(published: PublishedSums, paths: list[str]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Map each checkpoint path to its published sums; return (matches, listed names not found).

    A listed name matches a path exactly, or its basename when that basename is unique (OPT's lists
    name the shard files only).
    """
    by_base: dict[str, list[str]] = {}
    for path in paths:
        by_base.setdefault(path.rsplit("/", 1)[-1], []).append(path)
    matches: dict[str, dict[str, str]] = {}
    missing: list[str] = []
    for algorithm, table in (("sha256", published.sha256), ("md5", published.md5)):
        for name, digest in table.items():
            target = name if name in paths else (by_base[name][0] if len(by_base.get(name, [])) == 1 else None)
            if target is None:
                missing.append(name)
                continue
            matches.setdefault(target, {})[algorithm] = digest
    return matches, sorted(set(missing))

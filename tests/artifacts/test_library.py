"""Library tests: checksum lists, ranges, link signing, hashing. No DB, no network.
(Format detection is reshard's: tests/reshard/test_reshard_formats.py.)"""

from __future__ import annotations

import hashlib
import io

import pytest

from artifacts.checksums import ChecksumListError, match_published, parse_published_sums
from artifacts.hashing import hash_files, hash_stream
from artifacts.http import ByteRange, RangeNotSatisfiable, parse_range
from artifacts.storage import UnsafeKey, check_relative_path

MD5 = "0" * 32
SHA = "a" * 64


def test_opt_csv() -> None:
    sums = parse_published_sums(f"shard,md5sum\nreshard-model_part-0.pt,{MD5}\nreshard-model_part-1.pt,{'B' * 32}\n")
    assert sums.kind == "opt-csv"
    assert sums.md5 == {"reshard-model_part-0.pt": MD5, "reshard-model_part-1.pt": "b" * 32}


def test_sha256sum_and_md5sum_output() -> None:
    assert parse_published_sums(f"{SHA}  model.safetensors\n{SHA} *./config.json\n").sha256 == {
        "model.safetensors": SHA,
        "config.json": SHA,
    }
    assert parse_published_sums(f"{MD5}  a.pt\n").kind == "md5sum"


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "empty"),
        (f"{SHA}  ../etc/passwd\n", "'..'"),
        (f"{SHA}  /etc/passwd\n", "absolute"),
        (f"{SHA}  a\n{MD5}  b\n", "mixes"),
        ("not a sum line\n", "Line 1"),
        ("shard,md5sum\na.pt,xyz\n", "Line 2"),
        (f"shard,md5sum\n../a.pt,{MD5}\n", "'..'"),
    ],
)
def test_bad_lists_name_the_problem(text: str, words: str) -> None:
    with pytest.raises(ChecksumListError, match=words):
        parse_published_sums(text)


def test_published_names_match_by_basename() -> None:
    sums = parse_published_sums(f"{MD5}  part-0.pt\n{MD5}  gone.pt\n")
    matches, missing = match_published(sums, ["sub/part-0.pt", "config.json"])
    assert matches == {"sub/part-0.pt": {"md5": MD5}} and missing == ["gone.pt"]


@pytest.mark.parametrize(
    "header, expected",
    [
        ("bytes=0-9", ByteRange(0, 9)),
        ("bytes=5-", ByteRange(5, 99)),
        ("bytes=-10", ByteRange(90, 99)),
        ("bytes=-1000", ByteRange(0, 99)),
        ("bytes=90-1000", ByteRange(90, 99)),
        (None, None),
        ("items=0-1", None),
        ("Bytes=0-9", ByteRange(0, 9)),
        ("bytes=0-" + "9" * 5000, ByteRange(0, 99)),
        ("bytes=-" + "9" * 5000, ByteRange(0, 99)),
        ("bytes=" + "0" * 5000 + "5-6", ByteRange(5, 6)),
    ],
)
def test_parse_range(header: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header, 100) == expected


@pytest.mark.parametrize(
    "header",
    [
        "bytes=100-",
        "bytes=-0",
        "bytes=5-1",
        "bytes=x-1",
        "bytes=0-1,3-4",
        "bytes=-",
        "bytes=" + "9" * 5000 + "-",
        "bytes=١-٢",
    ],
)
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 100)


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a//b", "a\\b", "C:/x", "", "a/./b", "a b"])
def test_unsafe_keys(key: str) -> None:
    with pytest.raises(UnsafeKey):
        check_relative_path(key)


def test_hash_stream_one_pass_and_parallel_files() -> None:
    data = bytes(range(256)) * 50000
    sha, md5, size = hash_stream(io.BytesIO(data), buffer_size=65536)
    assert (sha, md5, size) == (hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest(), len(data))

    def broken() -> io.BytesIO:
        raise OSError("disk on fire")

    digests, failures = hash_files([("a", lambda: io.BytesIO(data)), ("b", broken)], workers=2)
    assert [d.sha256 for d in digests] == [sha] and failures[0].name == "b" and "disk on fire" in failures[0].error

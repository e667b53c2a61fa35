"""Tokenized datasets: one flat token file, read through a memory map, cut into packed sequences.

File layout (``*.tokens``), little-endian::

    bytes [0, 4096)        header: b"ORTOKENS" then JSON (utf-8), padded with spaces
    bytes [4096, ...)      tokens, ``num_tokens`` x uint16 or uint32 (the header's "dtype")
    then, 8-byte aligned   document index: ``num_docs + 1`` x uint64 token offsets
                           (document d is tokens[index[d]:index[d+1]])

Header fields: format, version, dtype, num_tokens, num_docs, tokens_offset, doc_index_offset,
max_token_id, eos_token_id (appended after every document, or null), tokenizer, source.

Packing: documents are concatenated in file order, each ending in the tokenizer's EOS token,
which is the document boundary the model sees. Sequence i is the window
tokens[i*L : i*L + L + 1] (inputs the first L, targets the last L), so every target is a real
token and no padding exists. Attention is *not* masked across documents inside a sequence (as
GPT-3 and OPT trained): the EOS separator marks the boundary; the document index in the file
keeps the boundaries for tools that want them.

Sampling: a fixed permutation of the sequences per epoch, drawn from (seed, epoch). The
position is one integer, the number of sequences the whole run has consumed, so a resumed run,
at any data-parallel size with the same global batch, sees exactly the batches the
uninterrupted run would have.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

MAGIC = b"ORTOKENS"
HEADER_BYTES = 4096
FORMAT = "openrelease-tokens"
VERSION = 1
DTYPES: dict[str, type[np.unsignedinteger[Any]]] = {"uint16": np.uint16, "uint32": np.uint32}


class DataError(ValueError):
    """A token file is missing, malformed, or does not fit the run."""


def token_dtype(vocab_size: int) -> str:
    """The narrowest stored dtype for ids below ``vocab_size``."""
    return "uint16" if vocab_size <= 2**16 else "uint32"


def _align(offset: int, to: int = 8) -> int:
    return (offset + to - 1) // to * to


class TokenFileWriter:
    """Streams documents into ``path`` (through ``path.partial``, renamed on ``close``; a writer
    that is not closed leaves no file at ``path``)."""

    def __init__(self, path: str | os.PathLike[str], *, dtype: str, metadata: dict[str, Any] | None = None) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected one of {sorted(DTYPES)}")
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.dtype, self.np_dtype = dtype, DTYPES[dtype]
        self.limit = int(np.iinfo(self.np_dtype).max)
        self.metadata = dict(metadata or {})
        self.doc_offsets = [0]
        self.num_tokens = 0
        self.max_token_id = -1
        self._file = open(self.partial, "wb")  # noqa: SIM115 - closed in close()/abort()
        self._file.write(b"\0" * HEADER_BYTES)

    def add(self, ids: list[int] | np.ndarray) -> None:
        array = np.asarray(ids, dtype=np.int64)
        if array.size:
            low, high = int(array.min()), int(array.max())
            if low < 0 or high > self.limit:
                raise DataError(f"token id {low if low < 0 else high} does not fit {self.dtype}")
            self.max_token_id = max(self.max_token_id, high)
            self._file.write(array.astype(self.np_dtype).tobytes())
        self.num_tokens += int(array.size)
        self.doc_offsets.append(self.num_tokens)

    def close(self) -> dict[str, Any]:
        tokens_end = HEADER_BYTES + self.num_tokens * np.dtype(self.np_dtype).itemsize
        index_offset = _align(tokens_end)
        self._file.write(b"\0" * (index_offset - tokens_end))
        self._file.write(np.asarray(self.doc_offsets, dtype=np.uint64).tobytes())
        header = {
            **self.metadata,
            "format": FORMAT,
            "version": VERSION,
            "dtype": self.dtype,
            "num_tokens": self.num_tokens,
            "num_docs": len(self.doc_offsets) - 1,
            "tokens_offset": HEADER_BYTES,
            "doc_index_offset": index_offset,
            "max_token_id": self.max_token_id,
        }
        encoded = MAGIC + json.dumps(header, sort_keys=True).encode()
        if len(encoded) > HEADER_BYTES:
            raise DataError(f"token file header is {len(encoded)} bytes; at most {HEADER_BYTES} fit")
        self._file.seek(0)
        self._file.write(encoded.ljust(HEADER_BYTES, b" "))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial, self.path)
        return header

    def abort(self) -> None:
        self._file.close()
        self.partial.unlink(missing_ok=True)


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(HEADER_BYTES)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if not raw.startswith(MAGIC):
        raise DataError(
            f"{path}: not a token file (no {MAGIC.decode()} header); make one with `python -m training tokenize`"
        )
    try:
        header = json.loads(raw[len(MAGIC) :].decode().strip())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable token file header ({exc})") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION or header.get("dtype") not in DTYPES:
        raise DataError(
            f"{path}: token file format {header.get('format')!r} version {header.get('version')!r} "
            f"dtype {header.get('dtype')!r} is not {FORMAT} v{VERSION} with uint16/uint32"
        )
    itemsize = np.dtype(DTYPES[header["dtype"]]).itemsize
    expected = header["doc_index_offset"] + 8 * (header["num_docs"] + 1)
    if header["tokens_offset"] + header["num_tokens"] * itemsize > header["doc_index_offset"] or (
        path.stat().st_size != expected
    ):
        raise DataError(f"{path}: {path.stat().st_size} bytes, the header implies {expected}: truncated or corrupt")
    return header


class TokenFile:
    """The tokens of a file as a read-only memory map (nothing is read until sliced)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.header = read_header(self.path)
        self.num_tokens = int(self.header["num_tokens"])
        self.tokens = np.memmap(
            self.path,
            dtype=DTYPES[self.header["dtype"]],
            mode="r",
            offset=int(self.header["tokens_offset"]),
            shape=(self.num_tokens,),
        )

    @property
    def doc_offsets(self) -> np.ndarray:
        return np.memmap(
            self.path,
            dtype=np.uint64,
            mode="r",
            offset=int(self.header["doc_index_offset"]),
            shape=(int(self.header["num_docs"]) + 1,),
        )

    def num_sequences(self, seq_len: int) -> int:
        return max(0, (self.num_tokens - 1) // seq_len)

    def sequence(self, index: int, seq_len: int) -> np.ndarray:
        """Window ``index``: seq_len + 1 tokens (inputs are [:-1], targets [1:])."""
        start = index * seq_len
        return np.asarray(self.tokens[start : start + seq_len + 1], dtype=np.int64)


@dataclass
class SequenceSampler:
    """Deterministic order of packed sequences, one permutation per epoch from (seed, epoch)."""

    num_sequences: int
    seed: int
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.num_sequences <= 0:
            raise DataError("the token file holds no complete sequence at this --seq-len")
        self._epoch = -1
        self._order: np.ndarray | None = None

    def _order_of(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_sequences)
            else:
                self._order = np.arange(self.num_sequences)
            self._epoch = epoch
        assert self._order is not None
        return self._order

    def indices(self, start: int, count: int) -> list[int]:
        """Sequence indices at global sample positions [start, start + count)."""
        out = []
        for position in range(start, start + count):
            epoch, offset = divmod(position, self.num_sequences)
            out.append(int(self._order_of(epoch)[offset]))
        return out


def local_batch(
    data: TokenFile,
    sampler: SequenceSampler,
    *,
    position: int,
    global_batch: int,
    seq_len: int,
    dp_rank: int,
    dp_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """This data-parallel rank's share of the global batch at sample ``position``: rank r takes
    the r-th contiguous block of ``global_batch / dp_size`` sequences. (inputs, targets), each
    (B_local, seq_len) int64."""
    per_rank = global_batch // dp_size
    indices = sampler.indices(position + dp_rank * per_rank, per_rank)
    windows = torch.from_numpy(np.stack([data.sequence(i, seq_len) for i in indices]))  # (B_local, L + 1)
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


__all__ = [
    "DataError",
    "SequenceSampler",
    "TokenFile",
    "TokenFileWriter",
    "local_batch",
    "read_header",
    "token_dtype",
]

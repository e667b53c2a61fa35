"""The safetensors format, read and written here so both can stream.

Layout: 8-byte little-endian header length N, N bytes of JSON (``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}``, offsets relative to the end of the
header), then the raw little-endian bytes of every tensor. The library's ``save_file`` needs
every tensor in memory at once; here the header is computed from the shapes up front, so tensors
are written one at a time, in a fixed order, and hashed as they go. Reading uses ``os.pread``
into our own buffers instead of a memory map, so pages of a large file never count towards the
process's resident memory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reshard.errors import FormatError

DTYPE_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the library's own limit
_CHUNK = 1 << 30  # pread/write at most 1 GiB per call (Linux caps a single call near 2 GiB)
_HASH_CHUNK = 1 << 24
# sha256 runs on this thread while the main thread's write() of the same bytes is in the kernel
# (both release the GIL), so hashing costs no extra wall time.
_HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reshard-sha256")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        numel = 1
        for n in self.shape:
            numel *= n
        return numel * dtype_size(self.dtype)


def dtype_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes without a copy when it is already contiguous."""
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return memoryview(b"")
    return memoryview(flat.view(torch.uint8).numpy()).cast("B")


def _header_bytes(entries: list[TensorEntry], metadata: dict[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for entry in entries:
        if entry.dtype not in DTYPE_CODES:
            raise ValueError(f"tensor {entry.name!r}: dtype {entry.dtype} has no safetensors code")
        header[entry.name] = {
            "dtype": DTYPE_CODES[entry.dtype],
            "shape": list(entry.shape),
            "data_offsets": [offset, offset + entry.nbytes],
        }
        offset += entry.nbytes
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # 8-byte aligned data, as the library writes it
    return struct.pack("<Q", len(raw)) + raw


def planned_size(entries: list[TensorEntry], metadata: dict[str, str]) -> int:
    return len(_header_bytes(entries, metadata)) + sum(e.nbytes for e in entries)


# Output goes through O_DIRECT where the filesystem allows it. Buffered writes of many GB push
# the checkpoint through the page cache, evicting the source being read and throttling on dirty
# pages; on our VMs that made writing 5x slower than `cp`. RESHARD_DIRECT_IO=0 turns it off.
_ALIGN = 4096
_STAGE_BYTES = 16 << 20


def _direct_io_wanted() -> bool:
    return hasattr(os, "O_DIRECT") and os.environ.get("RESHARD_DIRECT_IO", "1") != "0"


class SequentialFile:
    """A file written front to back, hashed (sha256) on the way.

    With O_DIRECT, bytes are staged in an aligned buffer and written in aligned blocks while the
    hasher thread hashes the same block; the last block is padded and the file truncated back
    to its real size. Without it (tmpfs, other OSes), plain writes with the same overlap.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.size = 0
        self._hash = hashlib.sha256()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        self.direct = _direct_io_wanted()
        if self.direct:
            try:
                self._fd = os.open(self.path, flags | os.O_DIRECT, 0o644)
            except OSError:
                self.direct = False
        if not self.direct:
            self._fd = os.open(self.path, flags, 0o644)
        if self.direct:
            raw = torch.empty(_STAGE_BYTES + _ALIGN, dtype=torch.uint8)
            offset = (-raw.data_ptr()) % _ALIGN
            self._raw = raw
            self._stage = memoryview(raw[offset : offset + _STAGE_BYTES].numpy()).cast("B")
            self._fill = 0

    def _write_all(self, data: memoryview) -> None:
        done = 0
        while done < len(data):
            done += os.write(self._fd, data[done:])

    def write(self, data: memoryview) -> None:
        self.size += len(data)
        if not self.direct:
            for start in range(0, len(data), _HASH_CHUNK):
                chunk = data[start : start + _HASH_CHUNK]
                hashed = _HASHER.submit(self._hash.update, chunk)
                self._write_all(chunk)
                hashed.result()
            return
        pos = 0
        while pos < len(data):
            take = min(len(data) - pos, _STAGE_BYTES - self._fill)
            self._stage[self._fill : self._fill + take] = data[pos : pos + take]
            self._fill += take
            pos += take
            if self._fill == _STAGE_BYTES:
                self._flush()

    def _flush(self) -> None:
        real = self._fill
        hashed = _HASHER.submit(self._hash.update, self._stage[:real])
        padded = -(-real // _ALIGN) * _ALIGN
        if padded != real:
            self._stage[real:padded] = bytes(padded - real)
        try:
            self._write_all(self._stage[:padded])
        finally:
            hashed.result()
        self._fill = 0

    def close(self) -> tuple[int, str]:
        try:
            if self.direct and self._fill:
                self._flush()
                os.ftruncate(self._fd, self.size)  # drop the padding of the last block
        finally:
            os.close(self._fd)
            self._fd = -1
        return self.size, self._hash.hexdigest()

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class SafetensorsWriter:
    """Writes ``entries`` in the given order, one ``write`` per tensor; the sha256 of the file is
    computed on the way. Header keys are sorted, so the bytes depend only on names, dtypes,
    shapes, order and values."""

    def __init__(
        self, path: str | os.PathLike[str], entries: list[TensorEntry], metadata: dict[str, str] | None = None
    ) -> None:
        if len({e.name for e in entries}) != len(entries):
            raise ValueError(f"{path}: duplicate tensor names")
        self.path = Path(path)
        self.entries = entries
        self._next = 0
        self._file = SequentialFile(self.path)
        self._emit(memoryview(_header_bytes(entries, metadata or {})))

    def _emit(self, data: memoryview) -> None:
        self._file.write(data)

    @property
    def next_name(self) -> str | None:
        return self.entries[self._next].name if self._next < len(self.entries) else None

    def write(self, name: str, tensor: torch.Tensor) -> int:
        if self._next >= len(self.entries):
            raise RuntimeError(f"{self.path}: all planned tensors are already written, got {name!r}")
        entry = self.entries[self._next]
        if name != entry.name:
            raise RuntimeError(f"{self.path}: expected tensor {entry.name!r} next, got {name!r}")
        if tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
            raise RuntimeError(
                f"{self.path}: tensor {name!r} is {tensor.dtype} {tuple(tensor.shape)}, "
                f"planned {entry.dtype} {entry.shape}"
            )
        self._emit(tensor_bytes(tensor))
        self._next += 1
        return entry.nbytes

    def close(self) -> tuple[int, str]:
        """(size, sha256); fails if a planned tensor was never written."""
        if self._next != len(self.entries):
            self._file.abort()
            raise RuntimeError(
                f"{self.path}: {len(self.entries) - self._next} planned tensors were never written "
                f"(first: {self.entries[self._next].name!r})"
            )
        return self._file.close()

    def abort(self) -> None:
        self._file.abort()


class SafetensorsReader:
    """Validates the whole header on open (a truncated or corrupt file fails here, naming the file
    and the tensor) and reads tensors, or leading-dimension row ranges of them, with pread."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise FormatError(f"{self.path}: cannot open ({exc.strerror})") from None
        try:
            self._parse()
        except BaseException:
            os.close(self._fd)
            raise

    def _parse(self) -> None:
        file_size = os.fstat(self._fd).st_size
        raw = os.pread(self._fd, 8, 0)
        if len(raw) < 8:
            raise FormatError(f"{self.path}: truncated safetensors file ({file_size} bytes, no header)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > _MAX_HEADER or 8 + header_len > file_size:
            raise FormatError(
                f"{self.path}: corrupt or truncated safetensors header (claims {header_len} bytes, "
                f"file has {file_size})"
            )
        try:
            header = json.loads(os.pread(self._fd, header_len, 8))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"{self.path}: corrupt safetensors header ({exc})") from None
        if not isinstance(header, dict):
            raise FormatError(f"{self.path}: corrupt safetensors header (not a JSON object)")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.data_start = 8 + header_len
        data_size = file_size - self.data_start
        self._info: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        spans = []
        for name, info in header.items():
            try:
                dtype = CODE_DTYPES[info["dtype"]]
                shape = tuple(int(n) for n in info["shape"])
                begin, end = (int(x) for x in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise FormatError(f"{self.path}: corrupt safetensors header entry for {name!r}: {info!r}") from None
            entry = TensorEntry(name, dtype, shape)
            if end - begin != entry.nbytes or begin < 0:
                raise FormatError(
                    f"{self.path}: tensor {name!r} has data_offsets {[begin, end]} that do not match "
                    f"its shape {list(shape)} and dtype {info['dtype']}"
                )
            if end > data_size:
                raise FormatError(
                    f"{self.path}: truncated: tensor {name!r} ends at byte {self.data_start + end} "
                    f"but the file has {file_size} bytes"
                )
            self._info[name] = (dtype, shape, begin, end)
            spans.append((begin, end, name))
        spans.sort()
        for (_, end, name), (begin, _, nxt) in itertools.pairwise(spans):
            if begin < end:
                raise FormatError(f"{self.path}: corrupt: tensors {name!r} and {nxt!r} overlap")

    def keys(self) -> list[str]:
        return sorted(self._info)

    def __contains__(self, name: str) -> bool:
        return name in self._info

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[1]

    def dtype(self, name: str) -> torch.dtype:
        return self._entry(name)[0]

    def _entry(self, name: str) -> tuple[torch.dtype, tuple[int, ...], int, int]:
        try:
            return self._info[name]
        except KeyError:
            raise FormatError(f"{self.path}: no tensor {name!r}") from None

    def read(self, name: str, rows: tuple[int, int] | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """The whole tensor, or rows [lo, hi) of its first dimension, as a new tensor (or in
        ``out``, a contiguous tensor of the right shape and dtype)."""
        dtype, shape, begin, end = self._entry(name)
        if rows is not None and shape:
            lo, hi = rows
            row_bytes = (end - begin) // shape[0] if shape[0] else 0
            begin, end, shape = begin + lo * row_bytes, begin + hi * row_bytes, (hi - lo, *shape[1:])
        nbytes = end - begin
        if out is not None:
            if tuple(out.shape) != shape or out.dtype != dtype or not out.is_contiguous():
                raise ValueError(f"read({name!r}): out is {out.dtype} {tuple(out.shape)}, need {dtype} {shape}")
            buf = out.view(-1).view(torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
        else:
            buf = torch.empty(nbytes, dtype=torch.uint8)
        if nbytes:
            view = memoryview(buf.numpy()).cast("B")
            done = 0
            while done < nbytes:
                got = os.preadv(self._fd, [view[done : done + _CHUNK]], self.data_start + begin + done)
                if got <= 0:
                    raise FormatError(f"{self.path}: truncated while reading tensor {name!r}")
                done += got
        return out if out is not None else buf.view(dtype).reshape(shape)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

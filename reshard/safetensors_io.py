"""The safetensors format, read and written here so both can stream.

Layout: 8-byte little-endian header length N, N bytes of JSON (``{name: {"dtype", "shape",
"data_offsets": [begin, end]}, "__metadata__": {...}}``, offsets relative to the end of the
header), then the raw little-endian bytes of every tensor. The library's ``save_file`` needs
every tensor in memory at once; here the header is computed from the shapes up front, so tensors
are written one at a time, in a fixed order, and hashed as they go. Reading uses ``os.pread``
into our own buffers instead of a memory map, so pages of a large file never count towards the
process's resident memory. A tensor whose bytes already lie in a file (an ``Extent``) is copied
from there with ``pread`` straight into the output's staging buffer.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import struct
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

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
# Bytes are hashed in pieces of this size right after they are copied, while they are still in
# the CPU cache: sha256 streaming from memory runs about a third slower.
_HASH_CHUNK = 1 << 20


class Extent(NamedTuple):
    """``nbytes`` bytes of the open file ``fd`` from byte ``offset``."""

    fd: int
    offset: int
    nbytes: int


def slice_extents(extents: Iterable[Extent], start: int, length: int) -> list[Extent]:
    """Bytes [start, start + length) of the concatenation of ``extents``, as extents."""
    out: list[Extent] = []
    pos = 0
    for fd, offset, nbytes in extents:
        lo, hi = max(start, pos), min(start + length, pos + nbytes)
        if lo < hi:
            out.append(Extent(fd, offset + lo - pos, hi - lo))
        pos += nbytes
    if sum(e.nbytes for e in out) != length:
        raise ValueError(f"extents hold {pos} bytes; bytes [{start}, {start + length}) are out of range")
    return out


def pread_exactly(fd: int, view: memoryview, offset: int, what: str) -> None:
    """Fill ``view`` from ``fd`` at ``offset``; a short file is a truncated input."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done : done + _CHUNK]], offset + done)
        if got <= 0:
            raise FormatError(f"{what}: truncated (file ends before byte {offset + len(view)})")
        done += got


def pread_into(extents: Iterable[Extent], out: torch.Tensor, what: str) -> torch.Tensor:
    """The bytes of ``extents``, in order, into the contiguous tensor ``out`` (no memory map)."""
    view = out.view(-1).view(torch.uint8).numpy().data.cast("B") if out.numel() else memoryview(b"")
    pos = 0
    for fd, offset, nbytes in extents:
        if pos + nbytes > len(view):
            raise ValueError(f"{what}: extents hold more than the {len(view)} bytes of the output")
        pread_exactly(fd, view[pos : pos + nbytes], offset, what)
        pos += nbytes
    if pos != len(view):
        raise ValueError(f"{what}: extents hold {pos} bytes, the output {len(view)}")
    return out


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
    return flat.view(torch.uint8).numpy().data.cast("B")


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
# Small enough that a file's two stages stay in a core's L2 cache: ``pread`` then copies into
# cached lines and the hash reads them back from there. 8 MiB stages cost ~12% more CPU in
# copying and hashing (OPT-1.3B -> native tp=2). One 2 MiB O_DIRECT write at a time still runs
# at ~1.8 GB/s on our VMs' disk (8 MiB: ~2.2), above what a lane copies and hashes.
_STAGE_BYTES = 2 << 20


def _direct_io_wanted() -> bool:
    return hasattr(os, "O_DIRECT") and os.environ.get("RESHARD_DIRECT_IO", "1") != "0"


def _aligned_buffer(nbytes: int) -> tuple[torch.Tensor, memoryview]:
    raw = torch.empty(nbytes + _ALIGN, dtype=torch.uint8)
    offset = (-raw.data_ptr()) % _ALIGN
    aligned = raw[offset : offset + nbytes]
    return aligned, aligned.numpy().data.cast("B")


class SequentialFile:
    """A file written front to back, hashed (sha256) on the way.

    With O_DIRECT, bytes are copied (or ``pread``) into one of two aligned staging buffers and
    hashed piece by piece as they arrive; a full buffer goes to this file's write thread while
    the other one fills, so hashing and the disk overlap. The last block is padded and the file
    truncated back to its real size. Without O_DIRECT (tmpfs, other OSes), plain writes of the
    same hashed pieces. Hashing runs on the calling thread: files written from different
    threads hash in parallel.
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
        self._buffers: list[torch.Tensor] = []
        self._stages: list[memoryview] = []
        self._current = self._fill = 0
        self._pending: Future[None] | None = None
        self._writer: ThreadPoolExecutor | None = None
        if self.direct:
            for _ in range(2):
                raw, stage = _aligned_buffer(_STAGE_BYTES)
                self._buffers.append(raw)
                self._stages.append(stage)
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reshard-write")

    def _write_all(self, data: memoryview) -> None:
        done = 0
        while done < len(data):
            done += os.write(self._fd, data[done:])

    def _room(self, want: int) -> memoryview:
        """Where the next ``want`` bytes (at most) go: the free end of the stage, or a bounce
        buffer without O_DIRECT."""
        want = min(want, _HASH_CHUNK)
        if not self.direct:
            if not self._stages:
                raw, stage = _aligned_buffer(_HASH_CHUNK)
                self._buffers.append(raw)
                self._stages.append(stage)
            return self._stages[0][:want]
        fill = self._fill
        return self._stages[self._current][fill : fill + min(want, _STAGE_BYTES - fill)]

    def _commit(self, piece: memoryview) -> None:
        """``piece`` (from ``_room``) now holds the next bytes of the file: hash, then write
        (or keep it staged)."""
        self._hash.update(piece)
        self.size += len(piece)
        if not self.direct:
            self._write_all(piece)
            return
        self._fill += len(piece)
        if self._fill == _STAGE_BYTES:
            self._flush()

    def write(self, data: memoryview) -> None:
        pos = 0
        while pos < len(data):
            if not self.direct:  # write straight from the caller's memory
                piece = data[pos : pos + _HASH_CHUNK]
                self._hash.update(piece)
                self._write_all(piece)
                self.size += len(piece)
                pos += len(piece)
                continue
            room = self._room(len(data) - pos)
            room[:] = data[pos : pos + len(room)]
            self._commit(room)
            pos += len(room)

    def write_tensor(self, data: torch.Tensor) -> None:
        """Append the bytes of a contiguous 1-D uint8 tensor. Copies into the stage with torch,
        which (unlike a memoryview copy) releases the GIL, so other lanes keep running."""
        if not self.direct:
            self.write(data.numpy().data.cast("B") if data.numel() else memoryview(b""))
            return
        pos = 0
        while pos < data.numel():
            fill = self._fill
            room = self._room(data.numel() - pos)
            self._buffers[self._current][fill : fill + len(room)].copy_(data[pos : pos + len(room)])
            self._commit(room)
            pos += len(room)

    def write_from(self, extent: Extent, what: str) -> None:
        """Append the bytes of ``extent``, read with pread into the staging buffer: the only
        copy is the kernel's, out of the page cache."""
        done = 0
        while done < extent.nbytes:
            room = self._room(extent.nbytes - done)
            pread_exactly(extent.fd, room, extent.offset + done, what)
            self._commit(room)
            done += len(room)

    def _flush(self) -> None:
        real = self._fill
        stage = self._stages[self._current]
        padded = -(-real // _ALIGN) * _ALIGN
        if padded != real:
            stage[real:padded] = bytes(padded - real)
        if self._pending is not None:
            self._pending.result()  # the other stage's write: in order, and that stage is free again
        assert self._writer is not None
        self._pending = self._writer.submit(self._write_all, stage[:padded])
        self._current ^= 1
        self._fill = 0

    def _drain(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def close(self) -> tuple[int, str]:
        try:
            if self.direct:
                if self._fill:
                    self._flush()
                self._drain()
                os.ftruncate(self._fd, self.size)  # drop the padding of the last block
        finally:
            self.abort()
        return self.size, self._hash.hexdigest()

    def abort(self) -> None:
        try:
            self._drain()
        except OSError:
            pass
        finally:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._stages.clear()
            self._buffers.clear()


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

    def _expect(self, name: str) -> TensorEntry:
        if self._next >= len(self.entries):
            raise RuntimeError(f"{self.path}: all planned tensors are already written, got {name!r}")
        entry = self.entries[self._next]
        if name != entry.name:
            raise RuntimeError(f"{self.path}: expected tensor {entry.name!r} next, got {name!r}")
        return entry

    def write(self, name: str, tensor: torch.Tensor) -> int:
        entry = self._expect(name)
        if tensor.dtype != entry.dtype or tuple(tensor.shape) != entry.shape:
            raise RuntimeError(
                f"{self.path}: tensor {name!r} is {tensor.dtype} {tuple(tensor.shape)}, "
                f"planned {entry.dtype} {entry.shape}"
            )
        flat = tensor.detach().contiguous().reshape(-1)
        self._file.write_tensor(flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8))
        self._next += 1
        return entry.nbytes

    def write_extents(self, name: str, extents: list[Extent]) -> int:
        """Tensor ``name`` from bytes that already lie in files (its stored bytes, in order)."""
        entry = self._expect(name)
        if sum(e.nbytes for e in extents) != entry.nbytes:
            raise RuntimeError(
                f"{self.path}: tensor {name!r} given {sum(e.nbytes for e in extents)} bytes, planned {entry.nbytes}"
            )
        for extent in extents:
            self._file.write_from(extent, f"{self.path}: source of {name!r}")
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

    def extent(self, name: str) -> Extent:
        """Where tensor ``name``'s bytes lie in this file."""
        _, _, begin, end = self._entry(name)
        return Extent(self._fd, self.data_start + begin, end - begin)

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
            pread_exactly(
                self._fd, buf.numpy().data.cast("B"), self.data_start + begin, f"{self.path}: tensor {name!r}"
            )
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

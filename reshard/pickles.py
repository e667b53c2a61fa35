"""Torch pickles (metaseq ``.pt`` files, transformers ``pytorch_model*.bin``): read without
executing anything, and written tensor by tensor.

Reading: always ``torch.load(..., weights_only=True)``, memory-mapped for zip-format files.
metaseq files also carry training state whose classes we must not import: ``argparse.Namespace``
(old fairseq ``args``) and omegaconf ``DictConfig``/``ListConfig`` (hydra ``cfg``). We allowlist
them for the duration of one load with ``torch.serialization.safe_globals`` -- Namespace as itself
(it is a plain attribute bag), omegaconf names as *stand-in* classes defined here that only store
the pickled state -- and then turn them into dicts and lists. This keeps torch's own restricted
unpickler in charge (no second unpickler to audit): anything outside the allowlist still fails
and is reported by name, never executed.

Writing: the torch zip layout (``archive/data.pkl`` + one stored, 64-byte aligned record per
tensor) with fixed dates and ids, so the bytes are deterministic and no more than one tensor is
in memory at a time.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import hashlib
import mmap
import os
import pickle
import pickletools
import re
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from reshard.errors import FormatError, UnsafePickleError
from reshard.safetensors_io import Extent, tensor_bytes

# --------------------------------------------------------------------------------------------
# Stand-ins for omegaconf (never imported)
# --------------------------------------------------------------------------------------------


class _StandIn:
    """Holds whatever state the pickle gives it; converted to plain data by ``to_plain``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = args

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = {**(state[0] or {}), **(state[1] or {})}
        self.__dict__["_state"] = state if isinstance(state, dict) else {"_value": state}


class _DictConfig(_StandIn):
    pass


class _ListConfig(_StandIn):
    pass


class _Node(_StandIn):
    pass


class _Metadata(_StandIn):
    pass


class _AnyType:
    """Stand-in for ``typing.Any`` (omegaconf records it as a type annotation)."""


_OMEGACONF_GLOBALS: list[tuple[Any, str]] = [
    (_DictConfig, "omegaconf.dictconfig.DictConfig"),
    (_ListConfig, "omegaconf.listconfig.ListConfig"),
    (_Metadata, "omegaconf.base.ContainerMetadata"),
    (_Metadata, "omegaconf.base.Metadata"),
    *[
        (_Node, f"omegaconf.nodes.{kind}")
        for kind in (
            "AnyNode",
            "StringNode",
            "IntegerNode",
            "FloatNode",
            "BooleanNode",
            "EnumNode",
            "BytesNode",
            "PathNode",
        )
    ],
    (_AnyType, "typing.Any"),
    (dict, "builtins.dict"),
    (list, "builtins.list"),
    (collections.defaultdict, "collections.defaultdict"),
]
SAFE_GLOBALS: list[Any] = [argparse.Namespace, *_OMEGACONF_GLOBALS]
ALLOWED_NAMES = {"argparse.Namespace", *(name for _, name in _OMEGACONF_GLOBALS)}


def to_plain(obj: Any) -> Any:
    """Namespaces and omegaconf stand-ins -> dicts/lists, recursively; tensors untouched."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, argparse.Namespace):
        return {k: to_plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, _DictConfig):
        content = obj.__dict__.get("_state", {}).get("_content")
        return None if content is None else {k: to_plain(v) for k, v in dict(content).items()}
    if isinstance(obj, _ListConfig):
        content = obj.__dict__.get("_state", {}).get("_content")
        return None if content is None else [to_plain(v) for v in content]
    if isinstance(obj, _Node):
        return to_plain(obj.__dict__.get("_state", {}).get("_val"))
    if isinstance(obj, (_Metadata, _AnyType)) or obj is _AnyType:
        return None
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_plain(v) for v in obj)
    return obj


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _globals_in_pickle(data: bytes) -> list[str]:
    """Every global a pickle refers to, found by disassembly (nothing is executed)."""
    found: list[str] = []
    strings: list[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # a damaged pickle: report what was seen before the damage
        pass
    return sorted(set(found))


def unsafe_globals(path: Path) -> list[str]:
    """Globals in the checkpoint that neither torch nor our allowlist accept."""
    if zipfile.is_zipfile(path):
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            try:
                return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
            except Exception:
                pass
        with zipfile.ZipFile(path) as archive:
            pkl = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            data = archive.read(pkl) if pkl else b""
    else:
        data = path.read_bytes()
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = set(_get_allowed_globals()) | ALLOWED_NAMES
    return [g for g in _globals_in_pickle(data) if g not in allowed]


def safe_load(path: str | os.PathLike[str], *, mmap_ok: bool = True) -> Any:
    """``torch.load`` restricted to weights and plain data; the result has dicts where the file
    had Namespaces or omegaconf containers. Raises UnsafePickleError naming the offending globals
    (the file is never executed), FormatError for anything unreadable."""
    return safe_load_mapped(path, mmap_ok=mmap_ok)[0]


def safe_load_mapped(path: str | os.PathLike[str], *, mmap_ok: bool = True) -> tuple[Any, bool]:
    """``safe_load`` plus whether the tensors are views of a memory-mapped file (only those may
    be passed to ``release``)."""
    path = Path(path)
    use_mmap = mmap_ok and zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(str(path), map_location="cpu", mmap=use_mmap, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = unsafe_globals(path)
        if not found:
            match = re.search(r"GLOBAL (\S+)", str(exc))
            found = [match.group(1)] if match else []
        if found or "GLOBAL" in str(exc) or "unrecognized function" in str(exc) or "allowlisted" in str(exc):
            names = ", ".join(found) or "unknown"
            raise UnsafePickleError(
                f"{path}: refusing to unpickle: it needs global(s) {names}, which are not on the allowlist of "
                f"plain data and tensors. Nothing from the file was executed. If the file is trusted, re-save "
                f"it as safetensors or as a plain dict of tensors.",
                globals_found=found,
            ) from None
        raise FormatError(f"{path}: corrupt pickle ({exc})") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, struct.error, KeyError) as exc:
        raise FormatError(f"{path}: not a readable torch checkpoint (corrupt or truncated?): {exc}") from None
    return to_plain(obj), use_mmap


_PAGE = mmap.PAGESIZE
try:
    _libc: Any = ctypes.CDLL(None, use_errno=True)
    _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
except (OSError, AttributeError):  # not Linux: release() becomes a no-op
    _libc = None
_MADV_DONTNEED = 4


def release(tensor: torch.Tensor) -> None:
    """Drop the resident pages behind a tensor that views a read-only memory-mapped file.
    Only ever call it on views of a ``safe_load_mapped(...)`` result that reported ``True``: on
    ordinary memory it would zero the pages.

    Pages of a mapped file stay resident (and count in RSS) after they are read; after each
    tensor is copied out they are handed back, so resident memory stays flat over a whole
    checkpoint. The mapping is private and never written, so a later access re-reads the file.
    """
    if _libc is None or tensor.numel() == 0:
        return
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    storage = tensor.untyped_storage()
    lo_bound = storage.data_ptr()
    hi_bound = lo_bound + storage.nbytes()
    # Only whole pages inside this storage: never touch memory the storage does not own.
    lo = max((start // _PAGE) * _PAGE, ((lo_bound + _PAGE - 1) // _PAGE) * _PAGE)
    hi = min(((end + _PAGE - 1) // _PAGE) * _PAGE, (hi_bound // _PAGE) * _PAGE)
    if hi > lo:
        _libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_DONTNEED)


class MappedFile:
    """Where ``torch.load(mmap=True)`` mapped a zip-format file, so that a tensor viewing it can
    be read with ``pread`` instead of through the mapping: touching mapped pages costs a page
    fault per 4 KiB (slow in a VM), counts towards resident memory until ``release``d, and the
    copy out of them is a second pass; pread copies out of the page cache in one.

    ``locate`` finds the mapping from the loaded storages themselves: torch maps the whole file
    once and each storage starts at its record's data offset, which the zip directory gives.
    Anything that does not fit that picture gives None, and the caller reads the views.
    """

    def __init__(self, path: Path, base: int, size: int) -> None:
        self.path, self.base, self.size = path, base, size
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._prefetched = False

    @classmethod
    def locate(cls, path: Path, obj: Any) -> MappedFile | None:
        storages: dict[int, int] = {}  # address -> bytes, of every non-empty storage in obj
        for tensor in _tensors_in(obj):
            storage = tensor.untyped_storage()
            if storage.nbytes():
                storages[storage.data_ptr()] = storage.nbytes()
        records: dict[int, int] = {}  # data offset in the file -> bytes, of every tensor record
        try:
            with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
                for info in archive.infolist():
                    if "/data/" not in info.filename or info.compress_type != zipfile.ZIP_STORED:
                        continue
                    raw.seek(info.header_offset)
                    local = raw.read(30)
                    if len(local) < 30 or local[:4] != b"PK\x03\x04":
                        return None
                    name_len, extra_len = struct.unpack("<HH", local[26:30])
                    if info.file_size:
                        records[info.header_offset + 30 + name_len + extra_len] = info.file_size
            size = path.stat().st_size
        except (OSError, zipfile.BadZipFile, struct.error):
            return None
        if not storages or not records:
            return None
        # The lowest storage starts at some record (not necessarily the first one: the file may
        # hold tensors the caller did not pass); the right one places every storage on a record.
        lowest = min(storages)
        for offset in sorted(records):
            base = lowest - offset
            if all(records.get(address - base) == nbytes for address, nbytes in storages.items()):
                return cls(path, base, size)
        return None

    def extent(self, tensor: torch.Tensor) -> Extent | None:
        """The file bytes a contiguous view of this mapping holds; None for anything else."""
        nbytes = tensor.numel() * tensor.element_size()
        start = tensor.data_ptr() - self.base
        if not nbytes or not tensor.is_contiguous() or start < 0 or start + nbytes > self.size:
            return None
        if not self._prefetched:
            # First byte wanted from this file: ask the kernel to read all of it ahead (one shard
            # file, not the checkpoint), so a cold source streams instead of waiting per read.
            self._prefetched = True
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_WILLNEED)
        return Extent(self.fd, start, nbytes)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _tensors_in(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors_in(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors_in(value)


# --------------------------------------------------------------------------------------------
# Writing (torch zip layout, streamed)
# --------------------------------------------------------------------------------------------

_STORAGE_TYPES = {
    torch.float32: "FloatStorage",
    torch.float16: "HalfStorage",
    torch.bfloat16: "BFloat16Storage",
    torch.float64: "DoubleStorage",
    torch.int64: "LongStorage",
    torch.int32: "IntStorage",
    torch.int8: "CharStorage",
    torch.uint8: "ByteStorage",
    torch.bool: "BoolStorage",
}
_DATE = (1980, 1, 1, 0, 0, 0)
_ALIGN = 64


class TensorRef:
    """Placeholder for a tensor inside the object handed to ``TorchZipWriter``: the pickle refers
    to record ``key``; its bytes are written later with ``write_tensor``."""

    def __init__(self, key: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
        self.key, self.dtype, self.shape = key, dtype, tuple(shape)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class _StorageRef:
    def __init__(self, ref: TensorRef) -> None:
        self.ref = ref


def _rebuild_args(ref: TensorRef) -> tuple[Any, ...]:
    stride, acc = [], 1
    for size in reversed(ref.shape):
        stride.append(acc)
        acc *= size
    return (_StorageRef(ref), 0, ref.shape, tuple(reversed(stride)), False, collections.OrderedDict())


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _StorageRef):
            storage_type = getattr(torch, _STORAGE_TYPES[obj.ref.dtype])
            return ("storage", storage_type, obj.ref.key, "cpu", obj.ref.numel)
        return None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, TensorRef):
            return (torch._utils._rebuild_tensor_v2, _rebuild_args(obj))
        return NotImplemented


class TorchZipWriter:
    """``torch.save``-compatible file written record by record.

    ``obj`` is the whole pickled object with ``TensorRef`` where tensors go; then every ref's
    tensor is written with ``write_tensor`` in the order of ``refs``. The result loads with
    ``torch.load(weights_only=True, mmap=True)``.
    """

    def __init__(self, path: str | os.PathLike[str], obj: Any, refs: list[TensorRef]) -> None:
        self.path = Path(path)
        self.prefix = "archive"
        self.refs = refs
        self._next = 0
        self._file = open(self.path, "xb")
        self._zip = zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        import io

        buffer = io.BytesIO()
        _Pickler(buffer, protocol=2).dump(obj)
        self._record("data.pkl", buffer.getvalue())
        self._record(".format_version", b"1")
        self._record(".storage_alignment", str(_ALIGN).encode())
        self._record("byteorder", b"little")

    def _info(self, name: str, size: int) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(f"{self.prefix}/{name}", date_time=_DATE)
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = size
        info.create_system = 0
        info.external_attr = 0
        # Pad the local header's extra field so the record's data starts 64-byte aligned (as
        # torch.save does), which lets torch.load(mmap=True) view it in place.
        zip64 = size * 1.05 > zipfile.ZIP64_LIMIT
        base = self._file.tell() + 30 + len(info.filename.encode()) + (20 if zip64 else 0)
        pad = -(base + 4) % _ALIGN
        info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        return info

    def _record(self, name: str, data: bytes | memoryview) -> None:
        info = self._info(name, len(data))
        with self._zip.open(info, "w", force_zip64=info.file_size * 1.05 > zipfile.ZIP64_LIMIT) as out:
            out.write(data)

    def write_tensor(self, ref: TensorRef, tensor: torch.Tensor) -> int:
        if self._next >= len(self.refs) or self.refs[self._next] is not ref:
            raise RuntimeError(f"{self.path}: tensors must be written in plan order")
        if tensor.dtype != ref.dtype or tuple(tensor.shape) != ref.shape:
            raise RuntimeError(
                f"{self.path}: record {ref.key} is {tensor.dtype} {tuple(tensor.shape)}, planned "
                f"{ref.dtype} {ref.shape}"
            )
        data = tensor_bytes(tensor)
        self._record(f"data/{ref.key}", data)
        self._next += 1
        return len(data)

    def close(self) -> None:
        if self._next != len(self.refs):
            self.abort()
            raise RuntimeError(f"{self.path}: {len(self.refs) - self._next} planned tensors were never written")
        self._record("version", b"3\n")
        # torch.save writes a random id; a fixed one keeps the bytes reproducible.
        self._record(".data/serialization_id", hashlib.sha256(self.path.name.encode()).hexdigest()[:40].encode())
        self._zip.close()
        self._file.close()

    def abort(self) -> None:
        try:
            self._zip.close()
        except Exception:
            pass
        self._file.close()


def file_sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def iter_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from iter_tensors(value, f"{prefix}.{key}" if prefix else str(key))

"""The conversion engine: one source, one output layout, one tensor at a time.

For each of our parameters in model order, the source assembles the full tensor once; every
output file that holds a piece of it (a rank's shard, a transformers tensor, a metaseq part's
slice) gets that piece next, so each file is written front to back and hashed on the way. When
the source already stores exactly an output rank's shard (same tp, same dtype), the shard's
bytes go from the source files to the output with ``pread`` and nothing is assembled. Files are
written on parallel lanes (threads), so hashing, the main cost, uses every core.
Output goes to ``.<dst>.reshard-tmp-<pid>`` next to DST and is renamed into place only when
complete; a failure removes it, and a later run removes any left by a killed run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from reshard import metaseq
from reshard.errors import ReshardError, UsageError
from reshard.formats import TARGET_FORMATS, check_options
from reshard.layout import ModelLayout, Scratch, rank_piece, reorder_blocks
from reshard.pickles import TensorRef, TorchZipWriter, file_sha256
from reshard.safetensors_io import Extent, SafetensorsWriter, TensorEntry, planned_size
from reshard.sources import (
    NATIVE_FORMAT,
    NATIVE_VERSION,
    Source,
    StateSource,
    config_to_json,
    native_file_name,
    open_source,
)
from training import hf_name_map

TMP_MARK = ".reshard-tmp-"
HF_MAX_SHARD_BYTES = 5 * 1024**3  # transformers' default shard size
Progress = Callable[[int, int, int, int], None]  # bytes_done, bytes_total, tensors_done, tensors_total


@dataclass(frozen=True)
class FileInfo:
    path: str  # relative to the checkpoint directory
    size: int
    sha256: str


@dataclass(frozen=True)
class ConvertResult:
    dst: str
    format: str
    source_format: str
    architecture: str
    tp: int
    dtype: str
    parameter_count: int
    files: list[FileInfo]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Output plans
# --------------------------------------------------------------------------------------------


@dataclass
class _Out:
    """One output file: the tensors it receives, each produced from one of our full tensors."""

    name: str
    kind: str  # "safetensors" | "torchzip"
    # (stored name, our name, producer(full) -> tensor), in write order
    items: list[tuple[str, str, Callable[[torch.Tensor], torch.Tensor]]] = field(default_factory=list)
    entries: list[TensorEntry] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    pickle_obj: Any = None
    refs: dict[str, TensorRef] = field(default_factory=dict)
    trailing: list[tuple[TensorRef, torch.Tensor]] = field(default_factory=list)


def _native_plan(layout: ModelLayout, tp: int, dtype: torch.dtype) -> list[_Out]:
    outs = []
    for rank in range(tp):
        out = _Out(native_file_name(rank, tp), "safetensors", metadata={"format": "pt"})
        for name in layout.names:
            spec = layout.specs[name]
            out.items.append((name, name, _RankPiece(spec, rank, tp)))
            out.entries.append(TensorEntry(name, dtype, layout.local_shape(name, rank, tp)))
        outs.append(out)
    return outs


class _RankPiece:
    """Rank ``rank``'s shard of a full tensor; copies (dim-1 splits, fused blocks) go to the
    engine's scratch buffer, set before each tensor."""

    scratch: Scratch | None = None

    def __init__(self, spec: Any, rank: int, world: int) -> None:
        self.spec, self.rank, self.world = spec, rank, world

    def __call__(self, full: torch.Tensor) -> torch.Tensor:
        return rank_piece(full, self.spec, self.rank, self.world, _RankPiece.scratch)


def _hf_plan(layout: ModelLayout, dtype: torch.dtype, max_shard_bytes: int) -> list[_Out]:
    name_map = hf_name_map(layout.config)
    rows: list[tuple[str, str, TensorEntry]] = []
    for name in layout.names:
        for leaf in name_map[name].leaves():
            rows.append((leaf.name, name, TensorEntry(leaf.name, dtype, tuple(leaf.shape))))
    groups: list[list[tuple[str, str, TensorEntry]]] = [[]]
    size = 0
    for row in rows:
        if groups[-1] and size + row[2].nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(row)
        size += row[2].nbytes
    outs = []
    for i, group in enumerate(groups):
        file = "model.safetensors" if len(groups) == 1 else f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        out = _Out(file, "safetensors", metadata={"format": "pt"})
        for stored, ours, entry in group:
            out.items.append((stored, ours, _HFSplit(name_map[ours], stored)))
            out.entries.append(entry)
        outs.append(out)
    return outs


class _HFSplit:
    """Cuts one transformers tensor out of our full tensor (q/k/v of qkv, vocabulary rows...).
    The split of a full tensor is cached so fused tensors are split once."""

    _cache: tuple[int, dict[str, torch.Tensor]] | None = None

    def __init__(self, source: Any, stored: str) -> None:
        self.source, self.stored = source, stored

    def __call__(self, full: torch.Tensor) -> torch.Tensor:
        cached = _HFSplit._cache
        if cached is None or cached[0] != id(full):
            _HFSplit._cache = cached = (id(full), self.source.split(full))
        return cached[1][self.stored]


def _metaseq_plan(layout: ModelLayout, parts: int, dtype: torch.dtype) -> list[_Out]:
    cfg = layout.config
    names = metaseq.name_map(cfg)
    outs = []
    for part in range(parts):
        out = _Out(f"reshard-model_part-{part}.pt", "torchzip")
        model: dict[str, TensorRef] = {}
        for key, name in enumerate(layout.names):
            spec, shape = layout.specs[name], layout.local_shape(name, part, parts)
            ref = TensorRef(str(key), dtype, shape)
            model[names[name]] = ref
            out.refs[names[name]] = ref

            def produce(full: torch.Tensor, s: Any = spec, p: int = part, n: str = name) -> torch.Tensor:
                piece = rank_piece(full, s, p, parts)
                if metaseq.is_qkv(n):  # per part, K, V, Q
                    piece = reorder_blocks(piece, s, layout.shapes[n], parts, metaseq.QKV_ORDER)
                return piece

            out.items.append((names[name], name, produce))
        version = TensorRef(str(len(layout.names)), torch.float32, (1,))
        model[metaseq.VERSION_BUFFER] = version
        out.trailing.append((version, torch.tensor([3.0])))
        out.pickle_obj = {
            "model": model,
            "cfg": metaseq.cfg_from_config(cfg, parts),
            "extra_state": {},
            "optimizer_history": [],
            "args": None,
        }
        outs.append(out)
    return outs


# --------------------------------------------------------------------------------------------
# Temporary directories
# --------------------------------------------------------------------------------------------


def _tmp_prefix(dst: Path) -> str:
    return f".{dst.name}{TMP_MARK}"


def clean_stale(dst: Path) -> list[Path]:
    """Remove temp dirs of earlier runs for ``dst`` whose process is gone (their lock is free)."""
    removed: list[Path] = []
    if not dst.parent.is_dir():
        return removed
    for candidate in dst.parent.iterdir():
        if not candidate.name.startswith(_tmp_prefix(dst)) or not candidate.is_dir():
            continue
        lock = candidate / ".lock"
        try:
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            fd = None
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live conversion owns it
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
        finally:
            if fd is not None:
                os.close(fd)
    return removed


def write_manifest(folder: Path, files: list[FileInfo]) -> list[FileInfo]:
    """``manifest.json`` (every file with size and sha256) and ``SHA256SUMS`` (``sha256sum -c``)."""
    files = sorted(files, key=lambda f: f.path)
    manifest = json.dumps({"files": [asdict(f) for f in files]}, indent=2, sort_keys=True) + "\n"
    (folder / "manifest.json").write_text(manifest)
    manifest_info = FileInfo("manifest.json", len(manifest.encode()), hashlib.sha256(manifest.encode()).hexdigest())
    listed = sorted([*files, manifest_info], key=lambda f: f.path)
    (folder / "SHA256SUMS").write_text("".join(f"{f.sha256}  {f.path}\n" for f in listed))
    return listed


# --------------------------------------------------------------------------------------------
# convert()
# --------------------------------------------------------------------------------------------


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    to: str,
    tp: int | None = None,
    dtype: str | torch.dtype | None = None,
    arch: str | None = None,
    progress: Progress | None = None,
    max_shard_bytes: int = HF_MAX_SHARD_BYTES,
    fsync: bool = False,
) -> ConvertResult:
    """Convert the checkpoint at ``src`` to format ``to`` at ``dst`` (which must not exist).

    ``tp`` defaults to the source's tensor-parallel degree (native, metaseq) and must be 1 for
    ``hf``; ``dtype`` defaults to the source's. Same inputs and options give byte-identical files.
    ``fsync=True`` flushes every file to disk before the rename (durable against power loss; the
    rename alone already makes the result all-or-nothing for a killed process).
    """
    started = time.monotonic()
    if to not in TARGET_FORMATS:
        raise UsageError(f"--to {to!r}: use one of {', '.join(TARGET_FORMATS)}")
    dst = Path(dst).absolute()
    if dst.exists():
        raise UsageError(f"{dst} already exists; remove it or choose another destination")
    if not dst.parent.is_dir():
        raise UsageError(f"{dst.parent} does not exist; create it first")
    clean_stale(dst)
    source = open_source(src, arch=arch)
    try:
        return _convert(
            source,
            dst,
            to=to,
            tp=tp,
            dtype=dtype,
            progress=progress,
            max_shard_bytes=max_shard_bytes,
            started=started,
            fsync=fsync,
        )
    finally:
        source.close()


def save_state(
    state: dict[str, torch.Tensor],
    config: Any,
    dst: str | os.PathLike[str],
    *,
    to: str = "native",
    tp: int = 1,
    dtype: str | torch.dtype | None = None,
    extra_files: list[Path] | tuple[Path, ...] = (),
) -> ConvertResult:
    """Write full tensors under our names (e.g. ``training.gather_full_state(model)``) in any
    output layout, with the same guarantees as ``convert``; ``extra_files`` (a tokenizer) are
    copied in and listed in the manifest as a conversion carries a source's."""
    dst = Path(dst).absolute()
    if dst.exists():
        raise UsageError(f"{dst} already exists; remove it or choose another destination")
    clean_stale(dst)
    return _convert(
        StateSource(state, config, extra_files=extra_files),
        dst,
        to=to,
        tp=tp,
        dtype=dtype,
        progress=None,
        max_shard_bytes=HF_MAX_SHARD_BYTES,
        started=time.monotonic(),
        fsync=False,
    )


def _convert(
    source: Source,
    dst: Path,
    *,
    to: str,
    tp: int | None,
    dtype: str | torch.dtype | None,
    progress: Progress | None,
    max_shard_bytes: int,
    started: float,
    fsync: bool,
) -> ConvertResult:
    cfg, layout = source.config, source.layout
    options = check_options(to=to, tp=tp, dtype=dtype, source_tp=source.tp, source_dtype=source.dtype, config=cfg)
    out_tp, out_dtype = options.tp_size, options.dtype

    if to == "native":
        outs = _native_plan(layout, out_tp, out_dtype)
    elif to == "hf":
        outs = _hf_plan(layout, out_dtype, max_shard_bytes)
    else:
        outs = _metaseq_plan(layout, out_tp, out_dtype)

    tmp = dst.parent / f"{_tmp_prefix(dst)}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    lock_fd = os.open(tmp / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    try:
        infos = _write_all(source, tmp, outs, out_dtype, progress)
        dtype_name = options.dtype_name
        extra: list[tuple[str, bytes]] = []
        if to == "native":
            meta = {
                "format": NATIVE_FORMAT,
                "format_version": NATIVE_VERSION,
                "model": config_to_json(cfg),
                "tp_size": out_tp,
                "dtype": dtype_name,
                "vocab_padding": {
                    "rule": "round vocab_size up to a multiple of `multiple`; independent of tp",
                    "multiple": cfg.pad_vocab_multiple,
                    "vocab_size": cfg.vocab_size,
                    "padded_vocab_size": cfg.padded_vocab_size,
                },
                "files": [o.name for o in outs],
                "parameter_count": layout.parameter_count,
            }
            extra.append(("config.json", (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()))
        elif to == "hf":
            extra.append(
                ("config.json", (json.dumps(cfg.to_hf(dtype=dtype_name), indent=2, sort_keys=True) + "\n").encode())
            )
            if len(outs) > 1:
                weight_map = {stored: o.name for o in outs for stored, _, _ in o.items}
                total = sum(e.nbytes for o in outs for e in o.entries)
                index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
                extra.append(
                    ("model.safetensors.index.json", (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
                )
        for name, data in extra:
            (tmp / name).write_bytes(data)
            infos.append(FileInfo(name, len(data), hashlib.sha256(data).hexdigest()))
        for file in source.extra_files():
            if file.name in {i.path for i in infos}:
                continue
            shutil.copyfile(file, tmp / file.name)
            infos.append(FileInfo(file.name, file.stat().st_size, file_sha256(tmp / file.name)))
        listed = write_manifest(tmp, infos)
        if fsync:
            for info in listed:
                _fsync(tmp / info.path)
        os.close(lock_fd)
        lock_fd = -1
        os.unlink(tmp / ".lock")
        os.rename(tmp, dst)  # atomic publish: DST appears complete or not at all
        if fsync:
            _fsync_dir(dst.parent)
    except BaseException:
        if lock_fd >= 0:
            os.close(lock_fd)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ConvertResult(
        dst=str(dst),
        format=to,
        source_format=source.format,
        architecture=cfg.name,
        tp=out_tp,
        dtype=str(out_dtype).removeprefix("torch."),
        parameter_count=layout.parameter_count,
        files=[i for i in listed],
        seconds=round(time.monotonic() - started, 3),
    )


class _Lanes:
    """One thread per lane; file ``f`` always goes to lane ``f % lanes``, so each file's writes
    stay in order while different files copy and hash in parallel."""

    def __init__(self, files: int) -> None:
        count = max(1, min(files, os.cpu_count() or 1))
        self._pools = [ThreadPoolExecutor(max_workers=1, thread_name_prefix="reshard-lane") for _ in range(count)]

    def submit(self, file: int, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        return self._pools[file % len(self._pools)].submit(fn, *args)

    def shutdown(self, *, cancel: bool) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True, cancel_futures=cancel)


# Tensors whose writes may still be queued on the lanes; bounds the queue and keeps progress honest.
_IN_FLIGHT = 8
# Reading and assembling a tensor overlaps with writing the ones before it. Up to _FRESH_BYTES a
# tensor gets fresh memory, which its write jobs keep alive; up to _OVERLAP_BYTES it takes one of
# two scratch sets in turn, waiting only for that set's previous tensor; anything larger waits
# for the lanes and reuses one set. Overlap costs at most two sets of _OVERLAP_BYTES, never a
# second copy of the largest tensor.
_FRESH_BYTES = 1 << 20
_OVERLAP_BYTES = 64 << 20


def _within(piece: torch.Tensor, full: torch.Tensor) -> bool:
    """Whether ``piece`` views ``full``'s memory (else it is a copy in a scratch slot)."""
    start = full.data_ptr()
    return start <= piece.data_ptr() < start + max(1, full.numel() * full.element_size())


def _shard_extents(source: Source, outs: list[_Out], feeding: list[tuple[int, int]], name: str) -> list[Any] | None:
    """Per feed of ``name``, the source-file bytes of that rank's shard, if every feed is a
    native rank file whose shard the source stores as is; else None."""
    found: list[list[Extent]] = []
    for f, i in feeding:
        produce = outs[f].items[i][2]
        if outs[f].kind != "safetensors" or not isinstance(produce, _RankPiece):
            return None
        extents = source.local_extents(name, produce.rank, produce.world)
        if extents is None:
            return None
        found.append(extents)
    return found or None


def _write_all(
    source: Source, tmp: Path, outs: list[_Out], out_dtype: torch.dtype, progress: Progress | None
) -> list[FileInfo]:
    layout = source.layout
    total_bytes = sum(
        e.nbytes for o in outs for e in (o.entries or [TensorEntry(k, r.dtype, r.shape) for k, r in o.refs.items()])
    )
    total_tensors = len(layout.names)
    writers: list[Any] = []
    infos: list[FileInfo] = []
    lanes = _Lanes(len(outs))
    try:
        for out in outs:
            if out.kind == "safetensors":
                writers.append(SafetensorsWriter(tmp / out.name, out.entries, out.metadata))
            else:
                order = [out.refs[stored] for stored, _, _ in out.items] + [ref for ref, _ in out.trailing]
                writers.append(TorchZipWriter(tmp / out.name, out.pickle_obj, order))
        # which (file, item) pairs each of our tensors feeds, in file order
        feeds: dict[str, list[tuple[int, int]]] = {}
        for f, out in enumerate(outs):
            for i, (_, ours, _) in enumerate(out.items):
                feeds.setdefault(ours, []).append((f, i))
        done_bytes = 0
        in_flight: deque[tuple[list[Future[Any]], int, int]] = deque()  # (jobs, bytes and tensors when done)

        def settle(keep: int) -> None:
            while len(in_flight) > keep:
                jobs, done, count = in_flight.popleft()
                for job in jobs:
                    job.result()
                if progress:
                    progress(done, total_bytes, count, total_tensors)

        large, sets = Scratch(), [Scratch(), Scratch()]
        set_jobs: list[list[Future[Any]]] = [[], []]  # the last jobs that used each set
        turn = 0
        if progress:
            progress(0, total_bytes, 0, total_tensors)
        same_dtype = source.dtype == out_dtype
        for count, name in enumerate(layout.names, 1):
            feeding = feeds.get(name, [])
            jobs: list[Future[Any]] = []
            shards = _shard_extents(source, outs, feeding, name) if same_dtype else None
            if shards is not None:
                for (f, i), extents in zip(feeding, shards, strict=True):
                    jobs.append(lanes.submit(f, writers[f].write_extents, outs[f].items[i][0], extents))
                    done_bytes += sum(e.nbytes for e in extents)
                in_flight.append((jobs, done_bytes, count))
                settle(_IN_FLIGHT)
                continue
            nbytes = math.prod(layout.shapes[name]) * max(source.dtype.itemsize, out_dtype.itemsize)
            scratch: Scratch | None = None
            if nbytes > _OVERLAP_BYTES:
                settle(0)
                scratch = large
            elif nbytes > _FRESH_BYTES:
                chosen = turn % 2
                turn += 1
                for job in set_jobs[chosen]:
                    job.result()
                scratch = sets[chosen]
                set_jobs[chosen] = jobs
            _RankPiece.scratch = scratch
            full = source.read(name, scratch)
            if full.dtype != out_dtype:
                full = scratch.take("cast", full.shape, out_dtype).copy_(full) if scratch else full.to(out_dtype)
            for f, i in feeding:
                stored, _, produce = outs[f].items[i]
                piece = produce(full)
                if outs[f].kind == "safetensors":
                    jobs.append(lanes.submit(f, writers[f].write, stored, piece))
                else:
                    piece = piece.contiguous()
                    jobs.append(lanes.submit(f, writers[f].write_tensor, outs[f].refs[stored], piece))
                done_bytes += piece.numel() * piece.element_size()
                if scratch is not None and not _within(piece, full):
                    jobs[-1].result()  # the piece sits in a scratch slot the next feed reuses
                del piece
            # The next tensor to take this scratch set waits for these jobs.
            in_flight.append((jobs, done_bytes, count))
            settle(_IN_FLIGHT)
            del full
            _HFSplit._cache = None
        settle(0)
        for f, out in enumerate(outs):
            writer = writers[f]
            if out.kind == "safetensors":
                size, digest = writer.close()
            else:
                for ref, tensor in out.trailing:
                    writer.write_tensor(ref, tensor)
                writer.close()
                size, digest = (tmp / out.name).stat().st_size, file_sha256(tmp / out.name)
            infos.append(FileInfo(out.name, size, digest))
        return infos
    except BaseException:
        lanes.shutdown(cancel=True)  # no lane may touch a writer while it is aborted
        for writer in writers:
            try:
                writer.abort()
            except Exception:
                pass
        raise
    finally:
        lanes.shutdown(cancel=False)
        _RankPiece.scratch = None
        _HFSplit._cache = None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        _fsync(path)
    except OSError:
        pass


__all__ = [
    "ConvertResult",
    "FileInfo",
    "ReshardError",
    "clean_stale",
    "convert",
    "planned_size",
    "write_manifest",
]

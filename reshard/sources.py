"""Readers for every input layout, all answering in our terms: our parameter names and full
tensors. Opening a source checks it completely against the architecture before any tensor data
is read: every stored tensor is either used, explicitly known and ignored, or the open fails
listing the unused and the missing names; every shape is checked.

``Source.read(name)`` returns one full tensor (a new tensor, owned by the caller). Stored bytes
are read with ``pread`` where their place in the file is known; memory-mapped pages touched
otherwise are released after each tensor, so resident memory stays bounded by the largest tensor
however big the checkpoint is. ``Source.local_extents`` lets the engine copy a rank's shard
straight from the source files when the source already stores exactly that shard.
"""

from __future__ import annotations

import gc
import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reshard import metaseq
from reshard.errors import ArchitectureError, FormatError, MismatchError, UsageError
from reshard.formats import (
    NATIVE_FORMAT,
    NATIVE_VERSION,
    _listing,
    check_native_config,
    config_from_json,
    config_to_json,
    detect,
    metaseq_files,
    native_file_name,
)
from reshard.layout import ModelLayout, Scratch, assemble, local_block_sizes
from reshard.pickles import MappedFile, release, safe_load_mapped
from reshard.safetensors_io import Extent, SafetensorsReader, pread_into, slice_extents
from training import CONFIGS, ModelConfig, Shard, get_config
from training.hf import CheckpointError, CheckpointReader, Index, TensorFile, match_checkpoint, parse_dtype

# The native layout's names, written by convert and read here.
__all__ = ["NATIVE_FORMAT", "NATIVE_VERSION", "config_from_json", "config_to_json", "native_file_name"]

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "generation_config.json",
    "dict.txt",
    "gpt2-vocab.json",
    "gpt2-merges.txt",
)


def check_complete(
    where: str,
    *,
    expected: dict[str, tuple[int, ...]],
    found: dict[str, tuple[int, ...]],
    ignored: frozenset[str] | set[str] = frozenset(),
) -> None:
    """Nothing dropped silently: every found tensor is expected or ignored, every expected one is
    found with the expected shape."""
    missing = sorted(n for n in expected if n not in found)
    unused = sorted(n for n in found if n not in expected and n not in ignored)
    if missing or unused:
        parts = []
        if unused:
            parts.append(f"unused tensor(s) that match no parameter of the architecture: {_listing(unused)}")
        if missing:
            parts.append(f"missing tensor(s) the architecture requires: {_listing(missing)}")
        raise MismatchError(
            f"{where}: " + "; ".join(parts) + ". Check --arch / the config, or the file set.",
            missing=missing,
            unused=unused,
        )
    wrong = [f"{n} is {list(found[n])}, expected {list(shape)}" for n, shape in expected.items() if found[n] != shape]
    if wrong:
        raise MismatchError(
            f"{where}: shape mismatch: {_listing(wrong, 5)}. The weights do not belong to this "
            f"architecture (wrong --arch or config?)"
        )


class Source:
    """Base: subclasses set the attributes and implement ``_read``."""

    format: str
    path: Path
    config: ModelConfig
    layout: ModelLayout
    tp: int  # tensor-parallel parts in the source (1 for transformers)
    dtype: torch.dtype
    files: list[Path]
    architecture_from: str  # "checkpoint" or "--arch"

    def read(self, name: str, scratch: Scratch | None = None) -> torch.Tensor:
        """Our full tensor ``name``. Without ``scratch`` a new tensor; with it, a tensor in the
        scratch buffers, valid until the next ``read`` with the same scratch."""
        tensor = self._read(name, scratch)
        expected = self.layout.shapes[name]
        if tuple(tensor.shape) != expected:
            raise MismatchError(f"{self.path}: {name} assembled as {list(tensor.shape)}, expected {list(expected)}")
        return tensor

    def _read(self, name: str, scratch: Scratch | None) -> torch.Tensor:
        raise NotImplementedError

    def local_extents(self, name: str, rank: int, world: int) -> list[Extent] | None:
        """Rank ``rank``'s shard (of ``world``) of tensor ``name``, in our layout and the source's
        dtype, as bytes lying in the source files: for sources that store exactly that shard
        (same tp, blocks at most reordered). None when the shard has to be computed, or when
        checks need the values (replicated tensors must agree across parts)."""
        return None

    def extra_files(self) -> list[Path]:
        folder = self.path if self.path.is_dir() else self.path.parent
        return [folder / n for n in TOKENIZER_FILES if (folder / n).is_file()]

    def close(self) -> None:
        pass


def _arch(name: str | None) -> ModelConfig | None:
    if name is None:
        return None
    try:
        return get_config(name)
    except KeyError:
        raise UsageError(f"--arch {name!r} is not a known architecture; use one of {', '.join(CONFIGS)}") from None


def _dtype_of(dtypes: list[torch.dtype], where: str) -> torch.dtype:
    floats = sorted({d for d in dtypes if d.is_floating_point}, key=str)
    if len(floats) > 1:
        raise FormatError(f"{where}: tensors have mixed floating dtypes {[str(d) for d in floats]}")
    return floats[0] if floats else torch.float32


# --------------------------------------------------------------------------------------------
# Native layout
# --------------------------------------------------------------------------------------------


def read_native_config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    try:
        meta = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FormatError(f"{file}: unreadable ({exc})") from None
    found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
    if found != NATIVE_FORMAT:
        raise FormatError(f"{file}: not an {NATIVE_FORMAT} config (format={found!r})")
    check_native_config(meta, str(file))
    return meta


class NativeSource(Source):
    format = "native"

    def __init__(self, path: Path, arch: str | None = None) -> None:
        self.path = path
        meta = read_native_config(path)
        self.config = config_from_json(meta.get("model") or {}, str(path / "config.json"))
        self.architecture_from = "checkpoint"
        if arch is not None and _arch(arch) != self.config:
            raise ArchitectureError(
                f"{path}/config.json describes {self.config.name}, which differs from --arch {arch}; "
                f"drop --arch (native checkpoints carry their architecture)"
            )
        self.tp = int(meta["tp_size"])
        padding = meta.get("vocab_padding", {})
        if padding.get("multiple") != self.config.pad_vocab_multiple:
            raise FormatError(
                f"{path}/config.json: vocab_padding.multiple={padding.get('multiple')!r} disagrees "
                f"with model.pad_vocab_multiple={self.config.pad_vocab_multiple}"
            )
        self.layout = ModelLayout.of(self.config)
        self.files = [path / native_file_name(r, self.tp) for r in range(self.tp)]
        self.readers = [SafetensorsReader(f) for f in self.files]
        self.dtype = parse_dtype(meta["dtype"])
        for rank, reader in enumerate(self.readers):
            expected = {n: self.layout.local_shape(n, rank, self.tp) for n in self.layout.names}
            check_complete(str(reader.path), expected=expected, found={k: reader.shape(k) for k in reader.keys()})
            wrong = [k for k in reader.keys() if reader.dtype(k) != self.dtype]
            if wrong:
                raise MismatchError(
                    f"{reader.path}: tensor(s) {_listing(wrong)} are not {self.dtype} as config.json says"
                )

    def _read(self, name: str, scratch: Scratch | None) -> torch.Tensor:
        spec, shape = self.layout.specs[name], self.layout.shapes[name]
        local_shape = self.readers[0].shape(name)

        def local(rank: int) -> torch.Tensor:
            buffer = scratch.take("join", local_shape, self.dtype) if scratch is not None else None
            return self.readers[rank].read(name, out=buffer)

        out = scratch.take("full", shape, self.dtype) if scratch is not None else None
        return assemble(shape, spec, self.tp, self.dtype, local, out=out)

    def local_extents(self, name: str, rank: int, world: int) -> list[Extent] | None:
        if world != self.tp:
            return None
        # Replicated tensors come from rank 0's file, as ``read`` takes them.
        replicated = not isinstance(self.layout.specs[name], Shard)
        return [self.readers[0 if replicated else rank].extent(name)]

    def close(self) -> None:
        for reader in self.readers:
            reader.close()


# --------------------------------------------------------------------------------------------
# transformers (safetensors or pytorch_model*.bin, single or sharded with an index)
# --------------------------------------------------------------------------------------------


class _SafetensorsFile:
    """reshard's streaming safetensors reader (``pread``, no memory map) as a ``TensorFile``."""

    def __init__(self, path: Path) -> None:
        self.reader = SafetensorsReader(path)

    def keys(self) -> list[str]:
        return self.reader.keys()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.reader.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self.reader.dtype(name)

    def close(self) -> None:
        self.reader.close()

    def read(self, name: str, index: Index) -> torch.Tensor:
        rows = self.reader.read(name, (index[0].start, index[0].stop))
        return rows[(slice(None), *index[1:])]


class _PickledStateFile:
    """A ``pytorch_model*.bin`` through the allowlist unpickler, its mapped pages released after
    each read."""

    def __init__(self, path: Path) -> None:
        state, self.mapped = safe_load_mapped(path)
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise FormatError(f"{path}: expected a flat dict of tensors")
        self.state: dict[str, torch.Tensor] = state

    def keys(self) -> list[str]:
        return list(self.state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.state[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        return self.state[name].dtype

    def read(self, name: str, index: Index) -> torch.Tensor:
        stored = self.state[name]
        out = stored[index].clone()
        if self.mapped:
            release(stored)
        return out

    def close(self) -> None:
        self.state = {}


def _open_tensor_file(path: Path) -> TensorFile:
    return _SafetensorsFile(path) if path.name.endswith(".safetensors") else _PickledStateFile(path)


class HFSource(Source):
    format = "hf"

    def __init__(self, path: Path, arch: str | None = None) -> None:
        self.path = path
        config_file = path / "config.json"
        if config_file.is_file():
            try:
                hf_config = json.loads(config_file.read_text())
                self.config = ModelConfig.from_hf(
                    hf_config
                )  # no path in the name: outputs must not depend on where SRC lies
            except (json.JSONDecodeError, ValueError) as exc:
                raise FormatError(f"{config_file}: {exc}") from None
            self.architecture_from = "checkpoint"
            if arch is not None:
                # --arch is a fallback; with a config.json present it must agree on the shapes.
                forced = _arch(arch)
                assert forced is not None
                if ModelLayout.of(forced).shapes != ModelLayout.of(self.config).shapes:
                    raise ArchitectureError(f"{config_file} disagrees with --arch {arch}; drop --arch")
        else:
            forced = _arch(arch)
            if forced is None:
                raise ArchitectureError(
                    f"no architecture in {path} (no config.json); pass --arch NAME, one of {', '.join(CONFIGS)}"
                )
            self.config = forced
            self.architecture_from = "--arch"
        try:
            self.tensors = CheckpointReader(path, open_file=_open_tensor_file)
        except CheckpointError as exc:
            raise FormatError(str(exc)) from None
        self.files = self.tensors.files
        self.tp = 1
        self.layout = ModelLayout.of(self.config)
        try:
            self.name_map = match_checkpoint(self.config, self.tensors)
        except CheckpointError as exc:
            self.tensors.close()
            raise MismatchError(
                f"{exc}. Check --arch / the config, or the file set.", missing=exc.missing, unused=exc.unused
            ) from None
        expected = [leaf.name for src in self.name_map.values() for leaf in src.leaves()]
        # A tied model's head may still be stored; it is checked equal to the embedding on read.
        self.tied_head = self.config.tied and "lm_head.weight" in self.tensors.keys()
        self.dtype = _dtype_of([self.tensors.dtype(n) for n in expected], str(path))
        if set(self.name_map) != set(self.layout.names):
            raise RuntimeError(
                f"internal: hf name map and model disagree on {sorted(set(self.name_map) ^ set(self.layout.names))}"
            )

    def _read(self, name: str, scratch: Scratch | None) -> torch.Tensor:
        source = self.name_map[name]
        full = source.read(self.tensors, tuple(slice(0, n) for n in source.shape))
        if name == "embed.weight" and self.tied_head:
            rows = self.tensors.shape("lm_head.weight")[0]
            head = self.tensors.read("lm_head.weight", (slice(0, rows), slice(None)))
            if not torch.equal(head, full[:rows]):
                raise MismatchError(
                    f"{self.path}: lm_head.weight is stored but differs from the embedding, although "
                    f"config.json ties them (tie_word_embeddings); refusing to drop it"
                )
        return full.to(self.dtype)

    def close(self) -> None:
        self.tensors.close()


# --------------------------------------------------------------------------------------------
# metaseq: FSDP training shards and tensor-parallel parts
# --------------------------------------------------------------------------------------------


@dataclass
class _FlatEntry:
    module_key: str  # key of the flat param in the shard's model dict
    offset: int  # in the unpadded, concatenated flat param
    numel: int
    shape: tuple[int, ...]


@dataclass
class _Part:
    """One tensor-parallel part: its tensors by metaseq name, part-local shapes."""

    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    dtypes: dict[str, torch.dtype] = field(default_factory=dict)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    # The stored tensor as views of the loaded files, in storage order: one view, or the 1-D
    # pieces an FSDP flat parameter spreads over shard files. Calling it touches no data.
    views: Callable[[str], list[torch.Tensor]] | None = None
    touched: list[torch.Tensor] = field(default_factory=list)  # mapped views read since the last release
    mapped: bool = False

    def release(self) -> None:
        if self.mapped:
            for view in self.touched:
                release(view)
        self.touched.clear()


class MetaseqSource(Source):
    def __init__(self, path: Path, arch: str | None = None) -> None:
        self.path = path
        folder, chosen = (path, None) if path.is_dir() else (path.parent, path.name)
        listed = [entry.name for entry in folder.iterdir() if entry.is_file()]
        found = metaseq_files(listed, where=str(path), chosen=chosen)
        self.format = "metaseq-fsdp" if found.kind == "fsdp" else "metaseq"
        self.parts: list[_Part] = []
        self._loaded: list[Any] = []
        self._mapped: list[MappedFile] = []
        self.files = []
        first_cfg = None
        for shard_names in found.parts:
            if found.kind == "fsdp":
                part, cfg = self._open_fsdp_part([folder / name for name in shard_names])
            else:
                part, cfg = self._open_tp_part(folder / shard_names[0])
            self.parts.append(part)
            first_cfg = first_cfg if first_cfg is not None else cfg
        self.tp = len(self.parts)
        names = metaseq.name_map
        vocab_rows = self.parts[0].shapes.get("decoder.embed_tokens.weight", (0,))[0] * self.tp
        forced = _arch(arch)
        if forced is not None:
            self.config, self.architecture_from = forced, "--arch"
        else:
            self.config = metaseq.config_from_cfg(first_cfg or {}, vocab_rows=vocab_rows, file=str(self.files[0]))
            self.architecture_from = "checkpoint"
        if self.config.padded_vocab_size % self.tp or self.config.n_head % self.tp:
            raise MismatchError(
                f"{path}: {self.tp} parts cannot split {self.config.name} (heads {self.config.n_head}, "
                f"padded vocabulary {self.config.padded_vocab_size})"
            )
        self.layout = ModelLayout.of(self.config)
        self.names = names(self.config)
        if self.config.padded_vocab_size != vocab_rows:
            raise MismatchError(
                f"{path}: the embedding has {vocab_rows} rows over {self.tp} parts, but "
                f"{self.config.name} has a padded vocabulary of {self.config.padded_vocab_size}"
            )
        for p, part in enumerate(self.parts):
            expected = {self.names[n]: self.layout.local_shape(n, p, self.tp) for n in self.layout.names}
            ignored = {metaseq.VERSION_BUFFER, metaseq.TIED_OUTPUT}
            check_complete(f"{path} (part {p})", expected=expected, found=part.shapes, ignored=ignored)
            if (
                metaseq.TIED_OUTPUT in part.shapes
                and part.shapes[metaseq.TIED_OUTPUT] != part.shapes["decoder.embed_tokens.weight"]
            ):
                raise MismatchError(
                    f"{path} (part {p}): {metaseq.TIED_OUTPUT} has a different shape from the embedding"
                )
        self.dtype = _dtype_of([d for part in self.parts for d in part.dtypes.values()], str(path))

    # ---- opening ------------------------------------------------------------------------------

    def _load(self, file: Path) -> tuple[dict[str, Any], bool]:
        obj, mapped = safe_load_mapped(file)
        if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
            raise FormatError(f"{file}: not a metaseq checkpoint (no 'model' dict)")
        self._loaded.append(obj)
        self.files.append(file)
        located = MappedFile.locate(file, obj) if mapped else None
        if located is not None:
            self._mapped.append(located)
        return obj, mapped

    def _open_tp_part(self, file: Path) -> tuple[_Part, Any]:
        obj, mapped = self._load(file)
        model = obj["model"]
        part = _Part(mapped=mapped)
        for name, tensor in model.items():
            if not isinstance(tensor, torch.Tensor):
                raise FormatError(f"{file}: model[{name!r}] is not a tensor")
            clean = metaseq.clean_name(name)
            part.shapes[clean], part.dtypes[clean] = tuple(tensor.shape), tensor.dtype
        tensors = {metaseq.clean_name(k): v for k, v in model.items()}
        part.views = lambda name: [tensors[name]]
        part.dtypes.pop(metaseq.VERSION_BUFFER, None)
        return part, obj.get("cfg")

    def _open_fsdp_part(self, files: list[Path]) -> tuple[_Part, Any]:
        loaded = [self._load(f) for f in files]
        shards = [obj for obj, _ in loaded]
        part = _Part(mapped=all(mapped for _, mapped in loaded))
        entries: dict[str, _FlatEntry] = {}
        segments_of: dict[str, list[tuple[int, int, torch.Tensor]]] = {}  # key -> (start, length, shard flat)
        first_meta = None
        for s, (file, shard) in enumerate(zip(files, shards, strict=True)):
            meta = shard.get("shard_metadata")
            if not isinstance(meta, dict) or not isinstance(meta.get("param_metadata"), list):
                raise FormatError(f"{file}: no fairscale shard_metadata; cannot unflatten FSDP parameters")
            model = shard["model"]
            flat_keys = set()
            for module in meta["param_metadata"]:
                fsdp_path = metaseq.clean_name(str(module.get("fsdp_path", "")))
                for flat_name, info in (module.get("params") or {}).items():
                    key = f"{fsdp_path}.{flat_name}" if fsdp_path else flat_name
                    stored_key = next((k for k in model if metaseq.clean_name(k) == key), None)
                    if stored_key is None:
                        raise FormatError(
                            f"{file}: shard_metadata lists {key!r} but the model dict has no such flat param"
                        )
                    flat_keys.add(stored_key)
                    flat = model[stored_key]
                    if flat.ndim != 1:
                        raise FormatError(f"{file}: {key} is not a flat (1-D) tensor")
                    padding = int(info.get("padding", 0))
                    length = flat.numel() - padding
                    if length < 0:
                        raise FormatError(f"{file}: {key} has padding {padding} > its {flat.numel()} elements")
                    done = sum(seg[1] for seg in segments_of.get(key, []))
                    segments_of.setdefault(key, []).append((done, length, flat))
                    if s == 0:
                        offset = 0
                        for rel, shape, numel in zip(info["names"], info["shapes"], info["numels"], strict=True):
                            full = metaseq.clean_name(f"{fsdp_path}.{rel}" if fsdp_path else rel)
                            shape = tuple(int(x) for x in shape)
                            entries[full] = _FlatEntry(key, offset, int(numel), shape)
                            part.shapes[full], part.dtypes[full] = shape, flat.dtype
                            offset += int(numel)
                        if len({len(info["names"]), len(info["shapes"]), len(info["numels"])}) != 1:
                            raise FormatError(f"{file}: {key} metadata names/shapes/numels lengths differ")
                for info in module.get("shared_param_info") or []:
                    text = " ".join(map(str, info if isinstance(info, (list, tuple)) else [info]))
                    if not ("embed_tokens" in text and "output_projection" in text):
                        raise FormatError(
                            f"{file}: unsupported shared parameter {info!r} (only the tied output projection is known)"
                        )
            described = [
                (
                    m.get("fsdp_path"),
                    {
                        k: (v["names"], [list(x) for x in v["shapes"]], v["numels"])
                        for k, v in (m.get("params") or {}).items()
                    },
                )
                for m in meta["param_metadata"]
            ]
            if first_meta is None:
                first_meta = described
            elif described != first_meta:
                raise FormatError(
                    f"{file}: shard_metadata differs from shard 0 of the same part; shards of different "
                    f"checkpoints are mixed"
                )
            for name, tensor in model.items():
                if name in flat_keys:
                    continue
                clean = metaseq.clean_name(name)
                if not isinstance(tensor, torch.Tensor):
                    raise FormatError(f"{file}: model[{name!r}] is not a tensor")
                if s == 0:
                    part.shapes[clean] = tuple(tensor.shape)
                    part.buffers[clean] = tensor
                    if clean != metaseq.VERSION_BUFFER:
                        part.dtypes[clean] = tensor.dtype
        for key, segs in segments_of.items():
            total = sum(e.numel for e in entries.values() if e.module_key == key)
            have = sum(seg[1] for seg in segs)
            if have != total:
                raise FormatError(
                    f"{files[0].parent}: flat param {key} holds {have} elements after removing padding, "
                    f"its metadata needs {total}: a shard is truncated, corrupt or from another run"
                )

        def views(name: str) -> list[torch.Tensor]:
            if name in part.buffers:
                return [part.buffers[name]]
            entry = entries[name]
            pieces = []
            for start, length, flat in segments_of[entry.module_key]:
                lo, hi = max(entry.offset, start), min(entry.offset + entry.numel, start + length)
                if lo < hi:
                    pieces.append(flat[lo - start : hi - start])
            return pieces

        part.views = views
        return part, shards[0].get("cfg")

    # ---- reading ------------------------------------------------------------------------------

    def _extents(self, views: list[torch.Tensor]) -> list[Extent] | None:
        """The file bytes behind ``views``, in order, or None if any of them cannot be placed."""
        extents = []
        for view in views:
            extent = next((e for m in self._mapped if (e := m.extent(view)) is not None), None)
            if extent is None:
                return None
            extents.append(extent)
        return extents

    def _part_tensor(self, p: int, name: str, scratch: Scratch | None = None) -> torch.Tensor:
        """Part ``p``'s stored tensor ``name``: read with pread (into ``scratch``'s "join" slot
        when given) if its bytes can be placed in the files, else joined from or viewing the
        mapped file."""
        part = self.parts[p]
        assert part.views is not None
        views, shape = part.views(name), part.shapes[name]
        extents = self._extents(views)
        if extents is not None:
            dtype = views[0].dtype
            out = scratch.take("join", shape, dtype) if scratch is not None else torch.empty(shape, dtype=dtype)
            return pread_into(extents, out, f"{self.path} (part {p}): {name}")
        part.touched.extend(views)
        if len(views) == 1:
            return views[0].reshape(shape)
        flat = scratch.take("join", (math.prod(shape),), views[0].dtype) if scratch is not None else None
        # A tensor split across shard files is joined (copied) here, and only here.
        return torch.cat(views, out=flat).view(shape)

    def local_extents(self, name: str, rank: int, world: int) -> list[Extent] | None:
        spec, theirs = self.layout.specs[name], self.names[name]
        if world != self.tp or not isinstance(spec, Shard):
            return None
        if name == "embed.weight" and any(metaseq.TIED_OUTPUT in part.shapes for part in self.parts):
            return None  # the stored output projection must be compared with it
        part = self.parts[rank]
        assert part.views is not None
        extents = self._extents(part.views(theirs))
        if extents is None or part.dtypes[theirs] != self.dtype:
            return None
        local_shape = self.layout.local_shape(name, rank, world)
        nbytes = math.prod(local_shape) * self.dtype.itemsize
        if sum(e.nbytes for e in extents) != nbytes:
            raise MismatchError(
                f"{self.path} (part {rank}): {theirs} holds {sum(e.nbytes for e in extents)} bytes, "
                f"expected {nbytes} for shape {list(local_shape)}"
            )
        if not metaseq.is_qkv(name):
            return extents
        # Each part stores its q|k|v rows as k|v|q: pick the blocks' byte ranges in our order.
        full_shape = self.layout.shapes[name]
        if spec.dim % len(full_shape) != 0:
            return None
        sizes = local_block_sizes(spec, full_shape, world)
        row_bytes = nbytes // local_shape[0]
        stored_offset, offset = {}, 0
        for block in metaseq.QKV_ORDER:
            stored_offset[block] = offset
            offset += sizes[block]
        return [
            piece
            for block, size in enumerate(sizes)
            for piece in slice_extents(extents, stored_offset[block] * row_bytes, size * row_bytes)
        ]

    def _read(self, name: str, scratch: Scratch | None) -> torch.Tensor:
        spec = self.layout.specs[name]
        theirs = self.names[name]
        full_shape = self.layout.shapes[name]
        order = metaseq.QKV_ORDER if metaseq.is_qkv(name) else None

        def local(p: int) -> torch.Tensor:
            return self._part_tensor(p, theirs, scratch)

        try:
            out = scratch.take("full", full_shape, self.dtype) if scratch is not None else None
            contiguous = isinstance(spec, Shard) and spec.dim % len(full_shape) == 0 and not spec.blocks
            if contiguous and order is None:
                # Part p's rows are one contiguous range of the full tensor: copy the stored
                # pieces (which may span FSDP shard files) straight there, joining nothing.
                full = out if out is not None else torch.empty(full_shape, dtype=self.dtype)
                flat, pos = full.view(-1), 0
                for p in range(self.tp):
                    views = self.parts[p].views
                    assert views is not None
                    pieces = views(theirs)
                    extents = self._extents(pieces) if pieces and pieces[0].dtype == self.dtype else None
                    if extents is not None:
                        count = sum(e.nbytes for e in extents) // self.dtype.itemsize
                        if pos + count > flat.numel():
                            break  # reported below
                        pread_into(extents, flat[pos : pos + count], f"{self.path} (part {p}): {theirs}")
                        pos += count
                        continue
                    self.parts[p].touched.extend(pieces)
                    for piece in pieces:
                        flat[pos : pos + piece.numel()].copy_(piece.reshape(-1))
                        pos += piece.numel()
                if pos != flat.numel():
                    raise MismatchError(
                        f"{self.path}: {theirs} holds {pos} elements over {self.tp} parts, expected {flat.numel()}"
                    )
            else:
                full = assemble(full_shape, spec, self.tp, self.dtype, local, block_order=order, out=out)
            if not isinstance(spec, Shard):
                for p in range(1, self.tp):  # replicated: every part must hold the same values
                    if not torch.equal(local(p).to(self.dtype), full):
                        raise MismatchError(
                            f"{self.path}: replicated tensor {theirs} differs between part 0 and part {p}"
                        )
            if name == "embed.weight":
                for p, part in enumerate(self.parts):
                    tied = metaseq.TIED_OUTPUT in part.shapes
                    if tied and not torch.equal(
                        self._part_tensor(p, metaseq.TIED_OUTPUT), self._part_tensor(p, theirs)
                    ):
                        raise MismatchError(
                            f"{self.path} (part {p}): {metaseq.TIED_OUTPUT} is stored and differs from "
                            f"the embedding it is tied to; refusing to drop it"
                        )
            return full
        finally:
            for part in self.parts:
                part.release()

    def close(self) -> None:
        self._loaded.clear()
        self.parts.clear()
        for mapped in self._mapped:
            mapped.close()
        self._mapped.clear()


class StateSource(Source):
    """Full tensors already in memory under our names (a training model's gathered state)."""

    format = "state"

    def __init__(
        self, state: dict[str, torch.Tensor], config: ModelConfig, *, extra_files: list[Path] | tuple[Path, ...] = ()
    ) -> None:
        self.path = Path(".")
        self._extra_files = [Path(f) for f in extra_files]
        self.config, self.layout, self.tp, self.files = config, ModelLayout.of(config), 1, []
        self.architecture_from = "checkpoint"
        self.state = state
        check_complete("state", expected=dict(self.layout.shapes), found={k: tuple(v.shape) for k, v in state.items()})
        self.dtype = _dtype_of([t.dtype for t in state.values()], "state")

    def _read(self, name: str, scratch: Scratch | None) -> torch.Tensor:
        return self.state[name].detach().to("cpu", self.dtype)

    def extra_files(self) -> list[Path]:
        return list(self._extra_files)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Opening a metaseq checkpoint unpickles every shard's metadata: hundreds of thousands of small
    objects, all kept until the source closes. The cyclic collector would walk them again and again
    (a third of the time spent opening OPT-1.3B's 16 shards) for no garbage; paused, it walks them
    once afterwards. Reference counting frees everything as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def open_source(path: str | os.PathLike[str], *, arch: str | None = None) -> Source:
    path = Path(path)
    detected = detect(path)
    folder = path if path.is_dir() else path.parent
    with _gc_paused():
        if detected.format == "native":
            return NativeSource(folder, arch)
        if detected.format == "hf":
            return HFSource(folder, arch)
        return MetaseqSource(path, arch)

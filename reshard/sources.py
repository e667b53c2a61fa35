"""Readers for every input layout, all answering in our terms: our parameter names and full
tensors. Opening a source checks it completely against the architecture before any tensor data
is read: every stored tensor is either used, explicitly known and ignored, or the open fails
listing the unused and the missing names; every shape is checked.

``Source.read(name)`` returns one full tensor (a new tensor, owned by the caller). Memory-mapped
pages touched on the way are released after each tensor, so resident memory stays bounded by
the largest tensor however big the checkpoint is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reshard import metaseq
from reshard.errors import ArchitectureError, FormatError, MismatchError, UsageError
from reshard.layout import ModelLayout, Scratch, assemble
from reshard.pickles import release, safe_load_mapped
from reshard.safetensors_io import SafetensorsReader
from training import CONFIGS, ModelConfig, Shard, get_config, hf_name_map

NATIVE_FORMAT = "openrelease-native"
NATIVE_VERSION = 1
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
# transformers' old LLaMA exports stored the rotary inverse frequencies; we recompute them.
_HF_IGNORED = re.compile(r".*\.rotary_emb\.inv_freq$")
_FSDP_FILE = re.compile(r"^(?P<prefix>.+)-model_part-(?P<part>\d+)-shard(?P<shard>\d+)\.pt$")
_TP_FILE = re.compile(r"^(?P<prefix>.+)-model_part-(?P<part>\d+)\.pt$")


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def check_complete(
    where: str,
    *,
    expected: dict[str, tuple[int, ...]],
    found: dict[str, tuple[int, ...]],
    ignored: set[str] = frozenset(),
) -> None:  # type: ignore[assignment]
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


def native_file_name(rank: int, tp: int) -> str:
    return f"model-rank-{rank:05d}-of-{tp:05d}.safetensors"


def config_to_json(cfg: ModelConfig) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(cfg)


def config_from_json(fields: dict[str, Any], where: str) -> ModelConfig:
    try:
        return ModelConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{where}: field 'model' is not a valid architecture: {exc}") from None


def read_native_config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    try:
        meta = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FormatError(f"{file}: unreadable ({exc})") from None
    if meta.get("format") != NATIVE_FORMAT:
        raise FormatError(f"{file}: not an {NATIVE_FORMAT} config (format={meta.get('format')!r})")
    if meta.get("format_version") != NATIVE_VERSION:
        raise FormatError(f"{file}: format_version={meta.get('format_version')!r}; this tool reads {NATIVE_VERSION}")
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
        self.tp = int(meta.get("tp_size", 0))
        if self.tp < 1:
            raise FormatError(f"{path}/config.json: tp_size={meta.get('tp_size')!r} is not a positive int")
        padding = meta.get("vocab_padding", {})
        if padding.get("multiple") != self.config.pad_vocab_multiple:
            raise FormatError(
                f"{path}/config.json: vocab_padding.multiple={padding.get('multiple')!r} disagrees "
                f"with model.pad_vocab_multiple={self.config.pad_vocab_multiple}"
            )
        self.layout = ModelLayout.of(self.config)
        self.files = [path / native_file_name(r, self.tp) for r in range(self.tp)]
        self.readers = [SafetensorsReader(f) for f in self.files]
        try:
            self.dtype = getattr(torch, str(meta.get("dtype")))
            assert isinstance(self.dtype, torch.dtype)
        except (AttributeError, AssertionError):
            raise FormatError(f"{path}/config.json: dtype={meta.get('dtype')!r} is not a torch dtype") from None
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

    def close(self) -> None:
        for reader in self.readers:
            reader.close()


# --------------------------------------------------------------------------------------------
# transformers (safetensors or pytorch_model*.bin, single or sharded with an index)
# --------------------------------------------------------------------------------------------


class _HFTensors:
    """Stored name -> tensor file, with the duck-typed ``read(name, index)`` that training's
    name-map sources (File/Cat/Stack/PadRows) call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.st: dict[str, SafetensorsReader] = {}
        self.bins: dict[str, dict[str, torch.Tensor]] = {}
        self.mapped: dict[str, bool] = {}
        self.where: dict[str, str] = {}
        index = next(
            (
                path / n
                for n in ("model.safetensors.index.json", "pytorch_model.bin.index.json")
                if (path / n).is_file()
            ),
            None,
        )
        if (path / "model.safetensors").is_file():
            files = ["model.safetensors"]
        elif index is not None:
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
                raise FormatError(f"{index}: unreadable index ({exc})") from None
            files = sorted(set(weight_map.values()))
        elif (path / "pytorch_model.bin").is_file():
            files = ["pytorch_model.bin"]
        else:
            raise FormatError(f"{path}: no model.safetensors, pytorch_model.bin or index file")
        self.files = [path / f for f in files]
        for file in self.files:
            if not file.is_file():
                raise FormatError(f"{file}: listed in the index but missing")
            if file.name.endswith(".safetensors"):
                reader = SafetensorsReader(file)
                self.st[file.name] = reader
                names = reader.keys()
            else:
                state, self.mapped[file.name] = safe_load_mapped(file)
                if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                    raise FormatError(f"{file}: expected a flat dict of tensors")
                self.bins[file.name] = state
                names = list(state)
            for name in names:
                if name in self.where:
                    raise FormatError(f"{path}: tensor {name!r} is stored twice ({self.where[name]}, {file.name})")
                self.where[name] = file.name
        if index is not None and not (path / "model.safetensors").is_file():
            listed = set(weight_map)
            if listed != set(self.where):
                raise MismatchError(
                    f"{index}: index and files disagree on {_listing(sorted(listed ^ set(self.where)))}"
                )
        # transformers' OPT exports sometimes omit the "model." prefix ("decoder.layers.0...").
        self.prefix = "" if any(k.startswith("model.") for k in self.where) else "model."

    def ours(self, stored: str) -> str:
        return stored if stored.startswith("lm_head.") else self.prefix + stored

    def stored(self, name: str) -> str:
        return name if name.startswith("lm_head.") else name.removeprefix(self.prefix)

    def names(self) -> list[str]:
        return [self.ours(k) for k in self.where]

    def shape(self, name: str) -> tuple[int, ...]:
        stored = self.stored(name)
        file = self.where[stored]
        return self.st[file].shape(stored) if file in self.st else tuple(self.bins[file][stored].shape)

    def dtype(self, name: str) -> torch.dtype:
        stored = self.stored(name)
        file = self.where[stored]
        return self.st[file].dtype(stored) if file in self.st else self.bins[file][stored].dtype

    def read(self, name: str, index: tuple[slice, ...]) -> torch.Tensor:
        stored = self.stored(name)
        file = self.where[stored]
        if file in self.st:
            full = self.st[file].read(stored, (index[0].start, index[0].stop))
            return full[(slice(None), *index[1:])]
        mapped = self.bins[file][stored]
        out = mapped[index].clone()
        if self.mapped[file]:
            release(mapped)
        return out

    def close(self) -> None:
        for reader in self.st.values():
            reader.close()
        self.bins.clear()


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
        self.tensors = _HFTensors(path)
        self.files = self.tensors.files
        self.tp = 1
        self.layout = ModelLayout.of(self.config)
        found = {n: self.tensors.shape(n) for n in self.tensors.names()}
        layout = "stacked" if any(k.endswith("mlp.experts.gate_up_proj") for k in found) else "per_expert"
        self.name_map = hf_name_map(self.config, expert_layout=layout)
        expected = {leaf.name: leaf.shape for src in self.name_map.values() for leaf in src.leaves()}
        ignored = {n for n in found if _HF_IGNORED.match(n)}
        # A tied model's head may still be stored; it is checked equal to the embedding on read.
        self.tied_head = self.config.tied and "lm_head.weight" in found
        if self.tied_head:
            ignored.add("lm_head.weight")
        check_complete(str(path), expected=expected, found=found, ignored=ignored)
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
    reader: Callable[[str, Scratch | None], torch.Tensor] | None = None  # may return a view of a mapped file
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    segments: Callable[[str], list[torch.Tensor]] | None = None  # the tensor as 1-D views, in order
    touched: list[torch.Tensor] = field(default_factory=list)  # mapped views read since the last release
    mapped: bool = False

    def release(self) -> None:
        if self.mapped:
            for view in self.touched:
                release(view)
        self.touched.clear()


def find_metaseq_files(path: Path) -> tuple[str, dict[int, dict[int, Path]] | dict[int, Path]]:
    """("fsdp", {part: {shard: file}}) or ("tp", {part: file})."""
    folder, chosen = (path, None) if path.is_dir() else (path.parent, path.name)
    fsdp: dict[str, dict[int, dict[int, Path]]] = {}
    tp: dict[str, dict[int, Path]] = {}
    for file in sorted(folder.iterdir()):
        if m := _FSDP_FILE.match(file.name):
            fsdp.setdefault(m["prefix"], {}).setdefault(int(m["part"]), {})[int(m["shard"])] = file
        elif m := _TP_FILE.match(file.name):
            tp.setdefault(m["prefix"], {})[int(m["part"])] = file
    if chosen is not None:
        m = _FSDP_FILE.match(chosen) or _TP_FILE.match(chosen)
        if m is None:
            raise FormatError(f"{path}: not a metaseq file name (*-model_part-P-shardS.pt or *-model_part-P.pt)")
        fsdp = {k: v for k, v in fsdp.items() if k == m["prefix"]} if _FSDP_FILE.match(chosen) else {}
        tp = {k: v for k, v in tp.items() if k == m["prefix"]} if not _FSDP_FILE.match(chosen) else {}
    sets = [("fsdp", p, v) for p, v in fsdp.items()] + [("tp", p, v) for p, v in tp.items()]
    if not sets:
        raise FormatError(f"{path}: no metaseq files (*-model_part-P-shardS.pt or *-model_part-P.pt)")
    if len(sets) > 1:
        raise UsageError(
            f"{path}: holds several checkpoints ({', '.join(s[1] for s in sets)}); pass one of their "
            f"files as SRC to pick one"
        )
    kind, prefix, files = sets[0]
    parts = sorted(files)
    if parts != list(range(len(parts))):
        raise FormatError(f"{folder}: parts {parts} of {prefix} are not 0..{len(parts) - 1}; a part file is missing")
    if kind == "fsdp":
        counts = {p: sorted(files[p]) for p in parts}  # type: ignore[index]
        n = max(len(c) for c in counts.values())
        for p, shards in counts.items():
            if shards != list(range(n)):
                missing = sorted(set(range(n)) - set(shards))
                raise FormatError(f"{folder}: part {p} of {prefix} is missing shard file(s) {missing}")
    return kind, files


class MetaseqSource(Source):
    def __init__(self, path: Path, arch: str | None = None) -> None:
        self.path = path
        kind, found = find_metaseq_files(path)
        self.format = "metaseq-fsdp" if kind == "fsdp" else "metaseq-tp"
        self.parts: list[_Part] = []
        self._loaded: list[Any] = []
        self.files = []
        first_cfg = None
        for p in sorted(found):
            if kind == "fsdp":
                shard_files = [found[p][s] for s in sorted(found[p])]  # type: ignore[index]
                part, cfg = self._open_fsdp_part(shard_files)
            else:
                part, cfg = self._open_tp_part(found[p])  # type: ignore[arg-type]
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

        def read(name: str, scratch: Scratch | None) -> torch.Tensor:
            part.touched.append(tensors[name])
            return tensors[name]

        def segments(name: str) -> list[torch.Tensor]:
            part.touched.append(tensors[name])
            return [tensors[name].reshape(-1)]

        part.reader, part.segments = read, segments
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
            described = [(m.get("fsdp_path"), m.get("params")) for m in meta["param_metadata"]]
            if first_meta is None:
                first_meta = described
            elif [
                (p, {k: (v["names"], [list(x) for x in v["shapes"]], v["numels"]) for k, v in prm.items()})
                for p, prm in described
            ] != [
                (p, {k: (v["names"], [list(x) for x in v["shapes"]], v["numels"]) for k, v in prm.items()})
                for p, prm in first_meta
            ]:
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

        def read(name: str, scratch: Scratch | None) -> torch.Tensor:
            if name in part.buffers:
                return part.buffers[name]
            entry = entries[name]
            pieces = []
            for start, length, flat in segments_of[entry.module_key]:
                lo, hi = max(entry.offset, start), min(entry.offset + entry.numel, start + length)
                if lo < hi:
                    pieces.append(flat[lo - start : hi - start])
            part.touched.extend(pieces)
            # A tensor split across shard files is joined (copied) here, and only here.
            if len(pieces) == 1:
                return pieces[0].view(entry.shape)
            out = scratch.take("join", (entry.numel,), pieces[0].dtype) if scratch is not None else None
            return torch.cat(pieces, out=out).view(entry.shape)

        def segments(name: str) -> list[torch.Tensor]:
            if name in part.buffers:
                return [part.buffers[name].reshape(-1)]
            entry = entries[name]
            pieces = []
            for start, length, flat in segments_of[entry.module_key]:
                lo, hi = max(entry.offset, start), min(entry.offset + entry.numel, start + length)
                if lo < hi:
                    pieces.append(flat[lo - start : hi - start])
            part.touched.extend(pieces)
            return pieces

        part.reader, part.segments = read, segments
        return part, shards[0].get("cfg")

    # ---- reading ------------------------------------------------------------------------------

    def _part_tensor(self, p: int, name: str, scratch: Scratch | None = None) -> torch.Tensor:
        reader = self.parts[p].reader
        assert reader is not None
        return reader(name, scratch)

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
                    segs = self.parts[p].segments
                    assert segs is not None
                    for piece in segs(theirs):
                        flat[pos : pos + piece.numel()].copy_(piece)
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


class StateSource(Source):
    """Full tensors already in memory under our names (a training model's gathered state)."""

    format = "state"

    def __init__(self, state: dict[str, torch.Tensor], config: ModelConfig) -> None:
        self.path = Path(".")
        self.config, self.layout, self.tp, self.files = config, ModelLayout.of(config), 1, []
        self.architecture_from = "checkpoint"
        self.state = state
        check_complete("state", expected=dict(self.layout.shapes), found={k: tuple(v.shape) for k, v in state.items()})
        self.dtype = _dtype_of([t.dtype for t in state.values()], "state")

    def _read(self, name: str, scratch: Scratch | None) -> torch.Tensor:
        return self.state[name].detach().to("cpu", self.dtype)

    def extra_files(self) -> list[Path]:
        return []


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------


def detect(path: Path) -> str:
    if not path.exists():
        raise FormatError(f"{path}: no such file or directory")
    if path.is_dir():
        config = path / "config.json"
        if config.is_file():
            try:
                meta = json.loads(config.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise FormatError(f"{config}: unreadable ({exc})") from None
            if isinstance(meta, dict) and meta.get("format") == NATIVE_FORMAT:
                return "native"
        if any(
            (path / n).is_file()
            for n in (
                "model.safetensors",
                "model.safetensors.index.json",
                "pytorch_model.bin",
                "pytorch_model.bin.index.json",
            )
        ):
            return "hf"
        names = [f.name for f in path.iterdir()]
        if any(_FSDP_FILE.match(n) or _TP_FILE.match(n) for n in names):
            return "metaseq"
        raise FormatError(
            f"{path}: not a checkpoint we know (native config.json, transformers model files, or "
            f"metaseq *-model_part-P[-shardS].pt)"
        )
    if _FSDP_FILE.match(path.name) or _TP_FILE.match(path.name):
        return "metaseq"
    if path.name == "config.json" or path.suffix in (".safetensors", ".bin", ".json"):
        return detect(path.parent)
    raise FormatError(f"{path}: not a checkpoint we know; pass the checkpoint directory")


def open_source(path: str | Path, *, arch: str | None = None) -> Source:
    path = Path(path)
    kind = detect(path)
    if kind == "native":
        return NativeSource(path if path.is_dir() else path.parent, arch)
    if kind == "hf":
        return HFSource(path if path.is_dir() else path.parent, arch)
    return MetaseqSource(path, arch)

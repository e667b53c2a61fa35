"""What a checkpoint is, and whether a conversion of it can be done: the one place that decides.

``detect`` (a local path) and ``detect_files`` (a file listing plus a reader of small text files,
so object storage works the same) tell the format, model family, tensor-parallel size and dtype
from file names and ``config.json`` alone; no weights are read. ``check_options`` validates a
requested conversion before anything runs, naming the value to change. Everything that imports,
converts or lists checkpoints asks these two functions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reshard.errors import FormatError, UsageError
from training import ModelConfig
from training.hf import HF_INDEX_FILES, HF_SINGLE_FILES, dtype_name, hf_config_dtype, parse_dtype

# Formats a checkpoint can be in. metaseq's FSDP training shards can be read, never written.
FORMATS = ("native", "hf", "metaseq", "metaseq-fsdp")
TARGET_FORMATS = ("native", "hf", "metaseq")

NATIVE_FORMAT = "openrelease-native"
NATIVE_VERSION = 1

_FSDP_FILE = re.compile(r"^(?P<prefix>.+)-model_part-(?P<part>\d+)-shard(?P<shard>\d+)\.pt$")
_TP_FILE = re.compile(r"^(?P<prefix>.+)-model_part-(?P<part>\d+)\.pt$")
_HF_SHARD_FILE = re.compile(r"^(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)$")
_CONFIG_LIMIT = 4 * 1024 * 1024  # a config.json larger than this is not one


def native_file_name(rank: int, tp: int) -> str:
    return f"model-rank-{rank:05d}-of-{tp:05d}.safetensors"


@dataclass(frozen=True)
class Detected:
    """A checkpoint as its file names and config.json describe it."""

    format: str  # one of FORMATS
    family: str  # "opt", "llama", "mixtral"; "" when only an --arch could tell (transformers files, no config.json)
    tp_size: int
    dtype: str  # torch's name ("float16"); "" when only the weights tell (metaseq pickles)
    files: tuple[str, ...]  # the weight files (and index), as listed
    config: dict[str, Any] | None  # config.json as read, for hf and native


@dataclass(frozen=True)
class MetaseqFiles:
    kind: str  # "fsdp" (training shards) or "tp" (one file per tensor-parallel part)
    prefix: str  # "checkpoint_last", "reshard", ...
    parts: tuple[tuple[str, ...], ...]  # per part, its files in shard order (one file for "tp")


def _listing(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def metaseq_files(names: Sequence[str], *, where: str, chosen: str | None = None) -> MetaseqFiles:
    """The one metaseq checkpoint among ``names`` (the one ``chosen`` belongs to, when given),
    complete: parts 0..P-1, and for FSDP shards 0..S-1 of every part."""
    fsdp: dict[str, dict[int, dict[int, str]]] = {}
    tp: dict[str, dict[int, dict[int, str]]] = {}
    for name in sorted(names):
        if m := _FSDP_FILE.match(name):
            fsdp.setdefault(m["prefix"], {}).setdefault(int(m["part"]), {})[int(m["shard"])] = name
        elif m := _TP_FILE.match(name):
            tp.setdefault(m["prefix"], {}).setdefault(int(m["part"]), {})[0] = name
    if chosen is not None:
        m = _FSDP_FILE.match(chosen) or _TP_FILE.match(chosen)
        if m is None:
            raise FormatError(f"{where}: not a metaseq file name (*-model_part-P-shardS.pt or *-model_part-P.pt)")
        keep = m["prefix"]
        fsdp = {k: v for k, v in fsdp.items() if k == keep and _FSDP_FILE.match(chosen)}
        tp = {k: v for k, v in tp.items() if k == keep and not _FSDP_FILE.match(chosen)}
    sets = [("fsdp", prefix, parts) for prefix, parts in fsdp.items()]
    sets += [("tp", prefix, parts) for prefix, parts in tp.items()]
    if not sets:
        raise FormatError(f"{where}: no metaseq files (*-model_part-P-shardS.pt or *-model_part-P.pt)")
    if len(sets) > 1:
        raise UsageError(
            f"{where}: holds several checkpoints ({', '.join(prefix for _, prefix, _ in sets)}); keep one "
            f"checkpoint per directory, or pass one of its files to pick it"
        )
    kind, prefix, found = sets[0]
    part_numbers = sorted(found)
    if part_numbers != list(range(len(part_numbers))):
        raise FormatError(
            f"{where}: parts {part_numbers} of {prefix} are not 0..{len(part_numbers) - 1}; a part file is missing"
        )
    shard_count = max(len(shards) for shards in found.values())
    for part, shards in found.items():
        if sorted(shards) != list(range(shard_count)):
            missing = sorted(set(range(shard_count)) - set(shards))
            raise FormatError(f"{where}: part {part} of {prefix} is missing shard file(s) {missing}")
    parts = tuple(tuple(found[p][s] for s in range(shard_count)) for p in part_numbers)
    return MetaseqFiles(kind=kind, prefix=prefix, parts=parts)


def config_to_json(cfg: ModelConfig) -> dict[str, Any]:
    """The architecture as a native config.json's "model" field."""
    return dataclasses.asdict(cfg)


def config_from_json(fields: dict[str, Any], where: str) -> ModelConfig:
    try:
        return ModelConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{where}: field 'model' is not a valid architecture: {exc}") from None


def architecture(detected: Detected, *, where: str = ".") -> ModelConfig | None:
    """The architecture a checkpoint's config.json describes; None when it has none (metaseq
    keeps its architecture inside the weights, and transformers files may come without one)."""
    if detected.config is None:
        return None
    if detected.format == "native":
        return config_from_json(detected.config["model"], f"{where}/config.json")
    try:
        return ModelConfig.from_hf(detected.config)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"{where}/config.json: {exc}") from None


def _read_config(read_text: Callable[[str], str], where: str) -> dict[str, Any]:
    try:
        text = read_text("config.json")
    except (OSError, ValueError) as exc:
        raise FormatError(f"{where}/config.json: unreadable ({exc})") from None
    if len(text) > _CONFIG_LIMIT:
        raise FormatError(f"{where}/config.json: {len(text)} characters is too large for a model config")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{where}/config.json: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise FormatError(f"{where}/config.json: expected a JSON object, found {type(config).__name__}")
    return config


def check_native_config(config: dict[str, Any], where: str) -> tuple[int, str]:
    """(tp size, dtype name) of a native config.json, after checking the fields every reader needs."""
    if config.get("format_version") != NATIVE_VERSION:
        raise FormatError(
            f"{where}: format_version={config.get('format_version')!r}; this version reads {NATIVE_VERSION}"
        )
    tp_size = config.get("tp_size")
    if isinstance(tp_size, bool) or not isinstance(tp_size, int) or tp_size < 1:
        raise FormatError(f"{where}: tp_size={tp_size!r} is not a positive whole number")
    try:
        dtype = dtype_name(parse_dtype(str(config.get("dtype"))))
    except ValueError as exc:
        raise FormatError(f"{where}: {exc}") from None
    if not isinstance(config.get("model"), dict):
        raise FormatError(f"{where}: field 'model' (the architecture) is missing")
    return tp_size, dtype


def detect_files(names: Sequence[str], read_text: Callable[[str], str], *, where: str = ".") -> Detected:
    """The checkpoint whose files are ``names`` (paths relative to its directory, as a storage
    listing gives them); ``read_text(name)`` returns a small file's text (only config.json is read).

    Raises FormatError (or UsageError for several checkpoints in one place) saying what was found.
    """
    top = [n for n in names if "/" not in n]
    if not top:
        raise FormatError(
            f"{where}: holds no files{' at its top level' if names else ''}; point to a checkpoint directory"
        )
    config = _read_config(read_text, where) if "config.json" in top else None
    if config is not None and config.get("format") == NATIVE_FORMAT:
        tp_size, dtype = check_native_config(config, f"{where}/config.json")
        files = tuple(native_file_name(rank, tp_size) for rank in range(tp_size))
        missing = [f for f in files if f not in top]
        if missing:
            raise FormatError(
                f"{where}: config.json says tp_size={tp_size} but {_listing(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} missing"
            )
        family = str(config["model"].get("family", ""))
        return Detected("native", family, tp_size, dtype, files, config)

    hf_files = sorted(n for n in top if n in HF_SINGLE_FILES or n in HF_INDEX_FILES or _HF_SHARD_FILE.match(n))
    metaseq_names = [n for n in top if _FSDP_FILE.match(n) or _TP_FILE.match(n)]
    if hf_files and metaseq_names:
        raise FormatError(
            f"{where}: holds both transformers files ({_listing(hf_files, 3)}) and metaseq files "
            f"({_listing(sorted(metaseq_names), 3)}); keep one checkpoint per directory"
        )
    if hf_files:
        if not any(n in HF_SINGLE_FILES or n in HF_INDEX_FILES for n in hf_files):
            raise FormatError(
                f"{where}: {_listing(hf_files, 3)} look like a sharded transformers checkpoint, but its index "
                f"({' or '.join(HF_INDEX_FILES)}) is missing"
            )
        dtype = ""
        if config is not None and (stated := hf_config_dtype(config)):
            try:
                dtype = dtype_name(parse_dtype(stated))
            except ValueError as exc:
                raise FormatError(f"{where}/config.json: {exc}") from None
        family = str(config.get("model_type") or "") if config is not None else ""
        return Detected("hf", family, 1, dtype, tuple(hf_files), config)
    if metaseq_names:
        found = metaseq_files(metaseq_names, where=where)
        files = tuple(name for part in found.parts for name in part)
        return Detected("metaseq-fsdp" if found.kind == "fsdp" else "metaseq", "opt", len(found.parts), "", files, None)
    raise FormatError(
        f"{where}: not a checkpoint format we know (found {_listing(sorted(top))}); expected a native "
        f"config.json with model-rank-*.safetensors, transformers model files (model.safetensors, "
        f"pytorch_model.bin or an index), or metaseq *-model_part-P[-shardS].pt files"
    )


def detect(path: str | os.PathLike[str]) -> Detected:
    """``detect_files`` for a local directory, or for the directory of one of its files (a metaseq
    file picks that checkpoint when the directory holds several)."""
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file or directory")
    folder = path if path.is_dir() else path.parent
    names = sorted(entry.name for entry in folder.iterdir() if entry.is_file())
    if path.is_dir() or not (_FSDP_FILE.match(path.name) or _TP_FILE.match(path.name)):
        return detect_files(names, lambda name: (folder / name).read_text(), where=str(folder))
    found = metaseq_files(names, where=str(path), chosen=path.name)
    files = tuple(name for part in found.parts for name in part)
    return Detected("metaseq-fsdp" if found.kind == "fsdp" else "metaseq", "opt", len(found.parts), "", files, None)


# --------------------------------------------------------------------------------------------
# Conversion options
# --------------------------------------------------------------------------------------------


class OptionError(UsageError):
    """A requested conversion option cannot be used; ``option`` names it ("to", "tp", "dtype")."""

    def __init__(self, message: str, *, option: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class Options:
    """A conversion that can be done: the target format, tensor-parallel size and dtype."""

    to: str
    tp_size: int
    dtype: torch.dtype

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)


def check_options(
    *,
    to: str,
    tp: int | None,
    dtype: str | torch.dtype | None,
    source_tp: int,
    source_dtype: str | torch.dtype | None,
    config: ModelConfig | None,
    family: str = "",
) -> Options:
    """The conversion of a checkpoint (``source_tp`` parts in ``source_dtype``, architecture
    ``config`` when known, else just its ``family``) to ``to`` with ``tp`` parts in ``dtype``;
    ``tp`` and ``dtype`` default to the source's (tp 1 for transformers). Raises OptionError
    naming the option and the value to change."""
    if to not in TARGET_FORMATS:
        raise OptionError(f"Unknown target format {to!r}; use one of {', '.join(TARGET_FORMATS)}.", option="to")
    if tp is None:
        tp = 1 if to == "hf" else source_tp
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise OptionError(f"tp {tp!r}: give a positive whole number of tensor-parallel parts.", option="tp")
    if to == "hf" and tp != 1:
        raise OptionError(
            f"tp {tp}: transformers checkpoints are not tensor-parallel; set tp to 1 "
            "(or convert to native or metaseq for tp > 1).",
            option="tp",
        )
    try:
        wanted = parse_dtype(dtype) if dtype is not None else None
    except ValueError as exc:
        raise OptionError(str(exc), option="dtype") from None
    if wanted is None:
        try:
            wanted = parse_dtype(source_dtype or "")
        except ValueError:
            raise OptionError(
                f"The source does not record a dtype we write ({source_dtype!r}); choose one of fp16, bf16, fp32.",
                option="dtype",
            ) from None
    if config is not None:
        family = config.family
        try:
            config.check_tp(tp)
        except ValueError as exc:
            raise OptionError(f"tp {tp}: {exc}.", option="tp") from None
        if to == "hf" and config.family == "mixtral" and config.moe_every != 1:
            raise OptionError(
                f"{config.name} puts experts in every {config.moe_every} layers, which transformers' Mixtral "
                "cannot express; convert to native.",
                option="to",
            )
    if to == "metaseq" and family and family != "opt":
        raise OptionError(
            f"metaseq holds OPT models only; this is a {family} model. Convert to native or hf.", option="to"
        )
    return Options(to=to, tp_size=tp, dtype=wanted)

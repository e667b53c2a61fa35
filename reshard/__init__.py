"""Checkpoint resharding and format conversion: metaseq (FSDP shards, tensor-parallel parts),
transformers (safetensors / pytorch_model.bin, single or indexed) and our native layout.

Plain PyTorch (plus safetensors' file format, which we read and write ourselves): no Django, so
it runs under torchrun on a bare GPU box. Library API::

    reshard.detect(src) -> Detected       (format, family, tp, dtype from file names and config.json)
    reshard.detect_files(names, read_text) -> Detected   (the same from a storage listing)
    reshard.check_options(to=, tp=, dtype=, source_tp=, source_dtype=, config=) -> Options
    reshard.inspect(src) -> InspectResult
    reshard.convert(src, dst, *, to, tp=None, dtype=None, arch=None, progress=None) -> ConvertResult
    reshard.verify(dir, against=None) -> VerifyResult          (raises VerificationError)
    reshard.load_native(dir, group=None, dtype=None) -> training.Transformer (this rank only)
    reshard.save_state(state, config, dst, to="native", tp=1) -> ConvertResult (full tensors, our names)

Exit codes of ``python -m reshard`` (errors carry them as ``exc.exit_code``):
    0 ok; 1 internal error; 2 usage (bad options, DST exists, tp does not divide the model);
    3 bad input (unknown format, corrupt, truncated, mismatched, missing or unused tensors, no
    architecture); 4 verification failed; 5 unsafe pickle refused (nothing executed).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reshard.convert import ConvertResult, FileInfo, clean_stale, convert, save_state
from reshard.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_UNSAFE_PICKLE,
    EXIT_USAGE,
    EXIT_VERIFY_FAILED,
    ArchitectureError,
    FormatError,
    MismatchError,
    ReshardError,
    UnsafePickleError,
    UsageError,
    VerificationError,
)
from reshard.formats import (
    FORMATS,
    TARGET_FORMATS,
    Detected,
    OptionError,
    Options,
    architecture,
    check_options,
    detect,
    detect_files,
)
from reshard.native import load_native, native_config
from reshard.sources import config_to_json, open_source
from reshard.verify import VerifyResult, verify


@dataclass(frozen=True)
class InspectResult:
    path: str
    format: str  # one of FORMATS: native | hf | metaseq | metaseq-fsdp
    architecture: dict[str, Any]  # ModelConfig fields
    architecture_from: str  # "checkpoint" or "--arch"
    tp: int
    dtype: str
    parameter_count: int
    files: list[dict[str, Any]]  # {"path", "size"}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def inspect(src: str | os.PathLike[str], *, arch: str | None = None) -> InspectResult:
    """Format, architecture, tp, dtype and parameter count, from metadata (no weights read)."""
    source = open_source(src, arch=arch)
    try:
        return InspectResult(
            path=str(Path(src)),
            format=source.format,
            architecture=config_to_json(source.config),
            architecture_from=source.architecture_from,
            tp=source.tp,
            dtype=str(source.dtype).removeprefix("torch."),
            parameter_count=source.layout.parameter_count,
            files=[{"path": str(f), "size": f.stat().st_size} for f in source.files],
        )
    finally:
        source.close()


__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_INTERNAL",
    "EXIT_OK",
    "EXIT_UNSAFE_PICKLE",
    "EXIT_USAGE",
    "EXIT_VERIFY_FAILED",
    "ArchitectureError",
    "FORMATS",
    "TARGET_FORMATS",
    "ConvertResult",
    "Detected",
    "FileInfo",
    "FormatError",
    "InspectResult",
    "MismatchError",
    "OptionError",
    "Options",
    "ReshardError",
    "UnsafePickleError",
    "UsageError",
    "VerificationError",
    "VerifyResult",
    "architecture",
    "check_options",
    "clean_stale",
    "convert",
    "detect",
    "detect_files",
    "inspect",
    "load_native",
    "native_config",
    "save_state",
    "verify",
]

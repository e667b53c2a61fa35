"""Open a checkpoint directory for serving: check it before anything heavy, then load this rank's
shard of the model and the tokenizer.

Reads what the platform stores: the transformers layout (``training.load_pretrained``) and our
native tensor-parallel layout (``reshard.load_native``, one file per rank). metaseq's files must
be converted first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from inference_worker.tokenizer import Tokenizer, TokenizerError
from training.config import ModelConfig
from training.hf import load_pretrained, parse_dtype
from training.model import Transformer
from training.parallel import TPGroup


class StartupError(Exception):
    """The engine cannot serve this checkpoint; the message says what to change."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    format: str  # "hf" or "native"
    config: ModelConfig
    tokenizer: Tokenizer


def inspect_checkpoint(path: str | Path, *, tp_size: int) -> CheckpointInfo:
    """Everything that can be checked from metadata: the format, the architecture against the
    tensor-parallel size, and the tokenizer. No weights are read."""
    from reshard import ReshardError, architecture, detect

    path = Path(path)
    if not path.is_dir():
        raise StartupError(f"{path}: not a directory; pass the checkpoint directory (with config.json)")
    try:
        detected = detect(path)
        config = architecture(detected, where=str(path))
    except ReshardError as exc:
        raise StartupError(f"{path}: {exc}") from None
    if detected.format not in ("hf", "native"):
        raise StartupError(
            f"{path} holds a {detected.format} checkpoint, which the engine does not read: convert it with "
            f"`python -m reshard convert {path} DST --to native --tp {tp_size}`"
        )
    if config is None:
        raise StartupError(f"{path / 'config.json'} not found: the engine needs the model's config.json")
    try:
        config.check_tp(tp_size)
    except ValueError as exc:
        raise StartupError(f"{path / 'config.json'}: {exc}") from None
    if detected.format == "native" and detected.tp_size != tp_size:
        raise StartupError(
            f"{path} is stored at tp={detected.tp_size} but the engine runs {tp_size} ranks: start it with "
            f"--nproc-per-node {detected.tp_size}, or convert with `python -m reshard convert {path} DST "
            f"--to native --tp {tp_size}`"
        )
    try:
        tokenizer = Tokenizer.from_dir(
            path, bos_token_id=config.bos_token_id, special_ids=(config.eos_token_id, config.pad_token_id)
        )
    except TokenizerError as exc:
        raise StartupError(str(exc)) from None
    if tokenizer.vocab_size > config.padded_vocab_size:
        raise StartupError(
            f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary has "
            f"{config.vocab_size}: the tokenizer does not belong to this checkpoint"
        )
    return CheckpointInfo(path, detected.format, config, tokenizer)


def load_model(
    info: CheckpointInfo,
    *,
    group: object = None,
    dtype: str | torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> Transformer:
    """This rank's shard of the model, in eval mode."""
    torch_dtype = parse_dtype(dtype) if dtype is not None and dtype != "auto" else None
    if info.format == "native":
        from reshard import load_native

        return load_native(info.path, group=group, dtype=torch_dtype, device=device)
    model = load_pretrained(info.path, dtype=torch_dtype, device=device, group=TPGroup.resolve(group))
    return model.eval()

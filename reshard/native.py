"""Loading the native layout into training's Transformer: each rank reads only its own file."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from reshard.errors import MismatchError, UsageError
from reshard.layout import meta_model
from reshard.safetensors_io import SafetensorsReader
from reshard.sources import config_from_json, native_file_name, read_native_config
from training import ModelConfig, TPGroup, Transformer
from training.hf import parse_dtype


def native_config(path: str | os.PathLike[str]) -> tuple[ModelConfig, int, torch.dtype]:
    """(architecture, tp size, dtype) of a native checkpoint."""
    path = Path(path)
    meta = read_native_config(path)
    return config_from_json(meta["model"], str(path / "config.json")), int(meta["tp_size"]), parse_dtype(meta["dtype"])


def load_native(
    path: str | os.PathLike[str],
    *,
    group: object = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> Transformer:
    """training's ``Transformer`` for this rank of ``group`` (the world under torchrun, a group of
    one otherwise), built on the meta device and filled from this rank's file only.

    The group size must equal the checkpoint's tp; to run at another tp, convert first
    (``python -m reshard convert SRC DST --to native --tp N``).
    """
    path = Path(path)
    cfg, tp_size, stored_dtype = native_config(path)
    tp = TPGroup.resolve(group)
    if tp.world_size != tp_size:
        raise UsageError(
            f"{path} is stored at tp={tp_size} but the process group has {tp.world_size} ranks; "
            f"convert it with --to native --tp {tp.world_size}"
        )
    reader = SafetensorsReader(path / native_file_name(tp.rank, tp_size))
    try:
        model = meta_model(cfg, tp)
        params = dict(model.named_parameters())
        if set(params) != set(reader.keys()):
            raise MismatchError(
                f"{reader.path}: tensors differ from the model: {sorted(set(params) ^ set(reader.keys()))[:8]}"
            )
        state = {}
        for name, param in params.items():
            tensor = reader.read(name)
            if tuple(tensor.shape) != tuple(param.shape):
                raise MismatchError(
                    f"{reader.path}: {name} is {list(tensor.shape)}, rank {tp.rank} of tp={tp_size} "
                    f"needs {list(param.shape)}"
                )
            state[name] = tensor.to(device=device, dtype=dtype or stored_dtype)
        model.load_state_dict(state, strict=True, assign=True)
    finally:
        reader.close()
    return model.eval()

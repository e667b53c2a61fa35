"""Hosted inference engine: continuous batching over a paged KV cache, tensor-parallel under
torchrun, an OpenAI-compatible HTTP API. Plain PyTorch plus an ASGI server; never imports Django.

    python -m inference_worker serve CHECKPOINT_DIR --port 9000 --secret-file FILE
    torchrun --nproc-per-node N -m inference_worker serve CHECKPOINT_DIR ...

In-process (tests, benchmarks)::

    info = inspect_checkpoint(path, tp_size=1)
    engine = Engine(load_model(info), info.tokenizer, EngineConfig())
    engine.add("r1", info.tokenizer.encode("Hello"), SamplingParams(max_tokens=8, temperature=0))
    reports = engine.run_until_done()

The names above are loaded on first use (PEP 562), so that `inference_worker.protocol` (the wire
format: pydantic only) imports without torch; the portal derives its `/v1/openapi.json` from it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inference_worker.engine import Engine, EngineConfig, RequestOutput, SampleOutput
    from inference_worker.loading import CheckpointInfo, StartupError, inspect_checkpoint, load_model
    from inference_worker.sampling import SamplingParams

_HOME = {
    "Engine": "engine",
    "EngineConfig": "engine",
    "RequestOutput": "engine",
    "SampleOutput": "engine",
    "CheckpointInfo": "loading",
    "StartupError": "loading",
    "inspect_checkpoint": "loading",
    "load_model": "loading",
    "SamplingParams": "sampling",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'inference_worker' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"inference_worker.{_HOME[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "CheckpointInfo",
    "Engine",
    "EngineConfig",
    "RequestOutput",
    "SampleOutput",
    "SamplingParams",
    "StartupError",
    "inspect_checkpoint",
    "load_model",
]

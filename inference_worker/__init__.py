"""Hosted inference engine: continuous batching over a paged KV cache, tensor-parallel under
torchrun, an OpenAI-compatible HTTP API. Plain PyTorch plus an ASGI server; never imports Django.

    python -m inference_worker serve CHECKPOINT_DIR --port 9000 --secret-file FILE
    torchrun --nproc-per-node N -m inference_worker serve CHECKPOINT_DIR ...

In-process (tests, benchmarks)::

    info = inspect_checkpoint(path, tp_size=1)
    engine = Engine(load_model(info), info.tokenizer, EngineConfig())
    engine.add("r1", info.tokenizer.encode("Hello"), SamplingParams(max_tokens=8, temperature=0))
    reports = engine.run_until_done()
"""

from __future__ import annotations

from inference_worker.engine import Engine, EngineConfig, RequestOutput, SampleOutput
from inference_worker.loading import CheckpointInfo, StartupError, inspect_checkpoint, load_model
from inference_worker.sampling import SamplingParams

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

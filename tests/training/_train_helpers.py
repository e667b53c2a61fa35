"""Helpers for the training-engine tests: tiny token files and configs, the loss of one step
next to transformers' (run inside spawned workers too), and launching real runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _dist import free_port
from _workers import VOCAB, full_grads

import training
from training.data import TokenFileWriter
from training.loss import TrainModule

REPO = Path(__file__).resolve().parents[2]
EOS = 2

TINY_OPT = {
    "family": "opt",
    "name": "tiny-opt",
    "vocab_size": VOCAB,
    "n_layer": 2,
    "n_head": 4,
    "n_embd": 32,
    "ffn_dim": 64,
    "max_seq_len": 64,
}


def write_tokens(path: Path, *, docs: int = 60, seed: int = 0) -> Path:
    """Random documents of ids 3..VOCAB-1, each ended by EOS (never id 1: transformers' OPT
    embedding treats it as padding)."""
    rng = np.random.default_rng(seed)
    writer = TokenFileWriter(path, dtype="uint16", metadata={"eos_token_id": EOS, "vocab_size": VOCAB})
    for _ in range(docs):
        writer.add([*rng.integers(3, VOCAB, size=int(rng.integers(5, 40))).tolist(), EOS])
    writer.close()
    return path


def write_config(path: Path, **changes: Any) -> Path:
    path.write_text(json.dumps({**TINY_OPT, **changes}))
    return path


def train_args(model: Path | str, data: Path, out: Path, **flags: Any) -> list[str]:
    base = {
        "steps": 8,
        "batch-size": 4,
        "seq-len": 16,
        "lr": 1e-3,
        "save-every": 2,
    }
    base.update({k.replace("_", "-"): v for k, v in flags.items()})
    args = ["--model", str(model), "--data", str(data), "--out", str(out)]
    for key, value in base.items():
        if isinstance(value, list):
            for item in value:
                args += [f"--{key}", str(item)]
        elif value is True:
            args.append(f"--{key}")
        elif value is not None and value is not False:
            args += [f"--{key}", str(value)]
    return args


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


def run_train(
    args: list[str], *, nproc: int = 1, max_restarts: int = 0, timeout: int = 240
) -> subprocess.CompletedProcess[str]:
    """``python -m training train ARGS`` (one process) or under torchrun with ``nproc`` workers."""
    if nproc == 1 and max_restarts == 0:
        command = [sys.executable, "-m", "training", "train", *args]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            str(nproc),
            "--max-restarts",
            str(max_restarts),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
            "-m",
            "training",
            "train",
            *args,
        ]
    return subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def run_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout
    )


def events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "logbook.jsonl").read_text().splitlines() if line.strip()]


def step_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss of its last (accepted or replayed) execution."""
    return {e["step"]: e["loss"] for e in events(run_dir) if e["event"] == "step"}


# --------------------------------------------------------------------------------------------
# One step next to transformers (in this process or a spawned tensor-parallel worker)
# --------------------------------------------------------------------------------------------


def sequences(seed: int = 0, batch: int = 2, length: int = 13) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=gen)  # (B, L + 1), no id 1 (OPT padding)


def our_step(model: training.Transformer, seq: torch.Tensor, *, checkpointing: bool = False) -> dict[str, Any]:
    """Loss (CE mean + coef x aux) and full gradients of one training forward/backward."""
    model.zero_grad(set_to_none=True)
    ce_sum, aux = TrainModule(model, activation_checkpointing=checkpointing)(seq[:, :-1], seq[:, 1:])
    loss = ce_sum / seq[:, 1:].numel()
    if aux is not None:
        loss = loss + model.config.router_aux_loss_coef * aux
    loss.backward()
    grads, gap = full_grads(model)
    return {"loss": loss.item(), "grads": grads, "replicated_gap": gap}


def tp_loss_worker(checkpoints: dict[str, str]) -> dict[str, Any]:
    """Inside a spawned 2-rank world: our tp=2 step for each checkpoint."""
    seq = sequences()
    return {name: our_step(training.load_pretrained(path).train(), seq) for name, path in checkpoints.items()}

"""The training loop: tp x dp, checkpoints every K steps, resume, loss-spike policy, export.

``train(TrainConfig)`` is what ``python -m training train`` runs on every rank. It is
idempotent: run it again with the same ``--out`` after any crash and it continues from the
newest committed checkpoint (``torchrun --max-restarts`` does exactly that after a worker dies).
On CPU the losses after a resume are bit for bit those of the uninterrupted run at the same
world size: the model, optimizer, sampler position, spike history and every rank's RNG come
back exactly, and each step's arithmetic does not depend on the session.

One step: the rank's share of the global batch (``--batch-size`` sequences, split over dp),
in ``--grad-accum`` micro-batches; loss = mean next-token CE over the global batch's targets
(+ MoE aux loss x coefficient); DDP averages gradients over the "dp" mesh dimension; the global
gradient norm counts each tensor-parallel shard once and each replicated tensor once; then the
spike policy decides between an update (clipped) and a skip.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from training.checkpoint import (
    Committed,
    committed_checkpoints,
    discard_after,
    load_checkpoint,
    save_checkpoint,
)
from training.config import CONFIGS, ModelConfig, get_config
from training.data import DataError, SequenceSampler, TokenFile, local_batch, read_header
from training.logbook import Logbook
from training.loss import IGNORE_INDEX, TrainModule
from training.mesh import Mesh, close_mesh, init_mesh, world_size_from_env
from training.model import Transformer, meta_model
from training.parallel import Replicated, init_normal_, shard_tensor, sharding_plan
from training.schedule import DECAYS, Schedule

OPTIMIZERS = ("adamw", "sgd")
EXPORTS = "export"
RUN_FILE = "run.json"
# Flags that define what is being trained; a rerun into the same --out must keep them.
_IDENTITY = ("model", "data", "seq_len", "seed")
_INJECTED_SPIKE_FACTOR = 1000.0


class UsageError(ValueError):
    """A flag (``flag``) is invalid or does not fit the others; raised before any work."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag


@dataclass(frozen=True)
class SpikePolicy:
    factor: float = 4.0  # a loss above factor x the running average is a spike
    window: int = 50  # steps in the running average
    min_history: int = 10  # accepted steps needed before losses are judged
    max_consecutive: int = 3  # this many skips in a row roll the run back
    lr_backoff: float = 0.5  # learning-rate multiplier applied at each rollback


@dataclass(frozen=True)
class TrainConfig:
    model: str
    data: str
    out: str
    steps: int
    batch_size: int  # global: sequences per optimizer step over all data-parallel ranks
    seq_len: int
    lr: float
    save_every: int
    tp: int = 1
    seed: int = 0
    grad_accum: int = 1
    optimizer: str = "adamw"
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    momentum: float = 0.0
    warmup_steps: int = 0
    decay: str = "linear"
    min_lr_ratio: float = 0.1
    clip_grad: float = 1.0
    aux_loss_coef: float | None = None  # None: the model config's router_aux_loss_coef
    activation_checkpointing: bool = False
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    device: str = "auto"
    keep_last: int = 3
    log_every: int = 1
    shuffle: bool = True
    export_tp: int | None = None  # None: the run's tp
    export_dtype: str = "auto"  # auto: the base checkpoint's dtype, fp32 for random init
    resume_from: int | None = None
    spike: SpikePolicy = field(default_factory=SpikePolicy)
    # Fault injection for tests and drills; each fires once per run directory.
    inject_faults: tuple[str, ...] = ()  # "kill:RANK@STEP" (mid-step), "kill-in-save:RANK@STEP"
    inject_spikes: tuple[int, ...] = ()  # steps whose loss is multiplied by 1000 (before any rollback)

    def settings(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


# --------------------------------------------------------------------------------------------
# The model to train
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    config: ModelConfig
    path: Path | None  # checkpoint directory (fine-tuning); None: random init from a config
    dtype: str  # the checkpoint's stored dtype ("float32" for random init)
    tokenizer_files: tuple[Path, ...] = ()


def resolve_model(arg: str) -> ModelSource:
    """``--model``: a checkpoint directory (native, transformers or metaseq), a config.json
    (transformers' or ours), or a name from the size table."""
    path = Path(arg)
    if path.is_dir():
        import reshard
        from reshard.sources import TOKENIZER_FILES, open_source

        try:
            detected = reshard.detect(path)
            config = reshard.architecture(detected, where=str(path))
            if config is None:
                source = open_source(path)
                try:
                    config = source.config
                finally:
                    source.close()
        except (reshard.ReshardError, ValueError) as exc:
            raise UsageError("--model", f"{path} is not a checkpoint this platform reads ({exc})") from None
        tokenizer = tuple(path / n for n in TOKENIZER_FILES if (path / n).is_file())
        return ModelSource(config, path, detected.dtype or "float32", tokenizer)
    if path.suffix == ".json" and path.is_file():
        try:
            fields = json.loads(path.read_text())
            if "model_type" in fields:
                config = ModelConfig.from_hf(fields, name=path.stem)
            elif isinstance(fields.get("model"), dict):
                config = ModelConfig(**fields["model"])
            else:
                config = ModelConfig(**fields)
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as exc:
            raise UsageError("--model", f"{path}: not a model config ({exc})") from None
        return ModelSource(config, None, "float32")
    if arg in CONFIGS:
        return ModelSource(get_config(arg), None, "float32")
    raise UsageError(
        "--model",
        f"{arg!r} is not a checkpoint directory, a config .json file or a config name ({', '.join(CONFIGS)})",
    )


def _load_weights(model: Transformer, source: ModelSource, seed: int) -> None:
    """Fill this rank's shards: from the checkpoint (one full tensor at a time, through
    reshard's readers, so any stored tp or format works) or by random init."""
    if source.path is None:
        init_normal_(model, seed=seed)
        return
    from reshard.sources import open_source

    plan = sharding_plan(model)
    tp = model.tp
    reader = open_source(source.path)
    try:
        with torch.no_grad():
            for name, param in model.named_parameters():
                full = reader.read(name).to(torch.float32)
                param.copy_(shard_tensor(full, plan[name], tp.rank, tp.world_size))
    finally:
        reader.close()


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6 x matmul parameters a token uses, plus
    attention scores and values (PaLM's 12 x layers x q-width x seq_len)."""
    active = config.num_parameters(active=True)
    lookups = (config.max_seq_len + 2) * config.n_embd if config.family == "opt" else 0
    if not config.tied:
        lookups += config.padded_vocab_size * config.embed_dim  # the input embedding is a lookup
    attention = 12 * config.n_layer * config.n_head * config.attn_head_dim * seq_len
    return 6.0 * (active - lookups) + attention


# --------------------------------------------------------------------------------------------
# Validation: everything that can fail before any work
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    config: TrainConfig
    source: ModelSource
    world_size: int
    dp: int
    data_header: dict[str, Any]


def validate(config: TrainConfig, *, world_size: int | None = None) -> Plan:
    """Check every flag against the others, the model and the data; nothing is created."""
    world = world_size if world_size is not None else world_size_from_env()
    positive = {
        "--steps": config.steps,
        "--batch-size": config.batch_size,
        "--seq-len": config.seq_len,
        "--save-every": config.save_every,
        "--tp": config.tp,
        "--grad-accum": config.grad_accum,
        "--keep-last": config.keep_last,
        "--log-every": config.log_every,
    }
    for flag, value in positive.items():
        if value < 1:
            raise UsageError(flag, f"{value} must be at least 1")
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise UsageError("--lr", f"{config.lr} must be a positive number")
    if config.optimizer not in OPTIMIZERS:
        raise UsageError("--optimizer", f"{config.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    if config.decay not in DECAYS:
        raise UsageError("--decay", f"{config.decay!r} is not one of {', '.join(DECAYS)}")
    if not 0 <= config.warmup_steps <= config.steps:
        raise UsageError("--warmup-steps", f"{config.warmup_steps} must be between 0 and --steps {config.steps}")
    if config.precision not in ("auto", "fp32", "bf16"):
        raise UsageError("--precision", f"{config.precision!r} is not one of auto, fp32, bf16")
    if config.device not in ("auto", "cpu", "cuda"):
        raise UsageError("--device", f"{config.device!r} is not one of auto, cpu, cuda")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device", "cuda was asked for but no GPU is visible")
    if config.precision == "bf16" and config.device == "cpu":
        raise UsageError("--precision", "bf16 autocast is for GPUs; use fp32 on CPU")
    spike = config.spike
    if spike.factor <= 1 or spike.window < 1 or spike.min_history < 1 or spike.max_consecutive < 1:
        raise UsageError(
            "--spike-factor",
            "spike policy needs --spike-factor > 1 and --spike-window, --spike-min-history, "
            "--max-consecutive-spikes >= 1",
        )
    if not 0 < spike.lr_backoff <= 1:
        raise UsageError("--lr-backoff", f"{spike.lr_backoff} must be in (0, 1]")

    if world % config.tp:
        raise UsageError(
            "--tp",
            f"{config.tp} does not divide the {world} processes (torchrun --nproc-per-node x nodes); "
            f"use a tp that divides {world}",
        )
    dp = world // config.tp
    source = resolve_model(config.model)
    try:
        source.config.check_tp(config.tp)
    except ValueError as exc:
        raise UsageError("--tp", str(exc)) from None
    if config.export_tp is not None:
        try:
            source.config.check_tp(config.export_tp)
        except ValueError as exc:
            raise UsageError("--export-tp", str(exc)) from None
    if config.batch_size % dp:
        raise UsageError(
            "--batch-size", f"{config.batch_size} is not divisible by the data-parallel size dp={dp} (world / --tp)"
        )
    if (config.batch_size // dp) % config.grad_accum:
        raise UsageError(
            "--grad-accum",
            f"{config.grad_accum} does not divide the {config.batch_size // dp} sequences each data-parallel rank "
            f"gets per step (--batch-size / dp)",
        )
    if config.seq_len > source.config.max_seq_len:
        raise UsageError(
            "--seq-len", f"{config.seq_len} is longer than the model's context of {source.config.max_seq_len} tokens"
        )
    try:
        header = read_header(config.data)
    except DataError as exc:
        raise UsageError("--data", str(exc)) from None
    if header["max_token_id"] >= source.config.vocab_size:
        raise UsageError(
            "--data",
            f"{config.data} holds token id {header['max_token_id']} but the model's vocabulary has "
            f"{source.config.vocab_size} ids: it was tokenized with another tokenizer",
        )
    if (header["num_tokens"] - 1) // config.seq_len < 1:
        raise UsageError("--data", f"{config.data} has {header['num_tokens']} tokens, fewer than one --seq-len window")
    run_file = Path(config.out) / RUN_FILE
    if run_file.is_file():
        first = json.loads(run_file.read_text())
        for key in _IDENTITY:
            if first.get(key) != getattr(config, key):
                raise UsageError(
                    f"--{key.replace('_', '-')}",
                    f"{config.out} was started with {first.get(key)!r}, not {getattr(config, key)!r}; "
                    f"rerun with the same value, or use a new --out",
                )
    elif Path(config.out).exists() and not Path(config.out).is_dir():
        raise UsageError("--out", f"{config.out} exists and is not a directory")
    steps = [c.step for c in committed_checkpoints(config.out)]
    if config.resume_from is not None and config.resume_from not in steps:
        raise UsageError("--resume-from", f"no committed checkpoint at step {config.resume_from} (have {steps})")
    if steps and steps[-1] > config.steps and config.resume_from is None:
        raise UsageError(
            "--steps", f"{config.out} is already at step {steps[-1]}; pass --steps of at least {steps[-1]}"
        )
    for fault in config.inject_faults:
        _parse_fault(fault)
    return Plan(config, source, world, dp, header)


def _parse_fault(spec: str) -> tuple[str, int, int]:
    try:
        kind, where = spec.split(":", 1)
        rank, step = (int(x) for x in where.split("@", 1))
    except ValueError:
        raise UsageError("--inject-fault", f"{spec!r}: expected KIND:RANK@STEP") from None
    if kind not in ("kill", "kill-in-save"):
        raise UsageError("--inject-fault", f"{spec!r}: KIND is kill or kill-in-save")
    return kind, rank, step


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@dataclass
class TrainerState:
    step: int = 0
    samples: int = 0  # sequences the run has consumed: the sampler's position
    tokens: int = 0
    lr_scale: float = 1.0
    loss_history: list[float] = field(default_factory=list)
    consecutive_spikes: int = 0
    rollbacks: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, fields: dict[str, Any]) -> TrainerState:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in fields.items() if k in names})


def make_optimizer(config: TrainConfig, model: Transformer) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]  # norms and biases
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    # AdamW's state made up front, as its first step would (zeros, step 0), so a checkpoint
    # always holds the full state even when no step has been taken yet.
    for group in optimizer.param_groups:
        for param in group["params"]:
            optimizer.state[param] = {
                "step": torch.tensor(0.0, dtype=torch.float32),
                "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
            }
    return optimizer


def grad_norm(model: Transformer, plan: dict[str, Any]) -> torch.Tensor:
    """Global L2 norm of the gradients: tensor-parallel shards summed over the tp group,
    replicated tensors counted once (from tp rank 0). DDP already made them equal over dp."""
    tp = model.tp
    sharded: list[torch.Tensor] = []
    replicated: list[torch.Tensor] = []
    for name, param in model.named_parameters():
        if param.grad is not None:
            (replicated if isinstance(plan[name], Replicated) else sharded).append(param.grad)
    device = next(model.parameters()).device
    total = torch.zeros((), dtype=torch.float32, device=device)
    if sharded:
        total = total + torch.stack(torch._foreach_norm(sharded)).float().pow(2).sum()
    if replicated and tp.rank == 0:
        total = total + torch.stack(torch._foreach_norm(replicated)).float().pow(2).sum()
    if tp.world_size > 1:
        dist.all_reduce(total, group=tp.group)
    return total.sqrt()


class Session:
    """One process's run of ``train``: built once, then steps until done."""

    def __init__(self, plan: Plan, mesh: Mesh, book: Logbook) -> None:
        self.plan, self.config, self.mesh, self.book = plan, plan.config, mesh, book
        self.run_dir = Path(self.config.out)
        self.cfg = plan.source.config
        self.schedule = Schedule(
            lr=self.config.lr,
            total_steps=self.config.steps,
            warmup_steps=self.config.warmup_steps,
            decay=self.config.decay,
            min_lr_ratio=self.config.min_lr_ratio,
        )
        self.bf16 = mesh.device.type == "cuda" and self.config.precision in ("auto", "bf16")
        self.aux_coef = (
            self.config.aux_loss_coef if self.config.aux_loss_coef is not None else self.cfg.router_aux_loss_coef
        )
        self.faults = [_parse_fault(f) for f in self.config.inject_faults]
        self.state = TrainerState()

    # ---- set-up --------------------------------------------------------------------------
    def build(self, *, from_checkpoint: bool) -> None:
        mesh = self.mesh
        model = meta_model(self.cfg, mesh.tp)
        model.to_empty(device=mesh.device)
        if not from_checkpoint:  # a resume overwrites every weight: skip reading the base model
            _load_weights(model, self.plan.source, self.config.seed)
        model.train()
        if mesh.dp_size > 1:
            # DDP all-reduces dense gradient buckets; keep the tied embedding's gradient dense.
            model.embed.sparse_grad = False
        self.model = model
        self.plan_specs = sharding_plan(model)
        module = TrainModule(model, activation_checkpointing=self.config.activation_checkpointing)
        self.module: torch.nn.Module = module
        if mesh.dp_size > 1:
            self.module = DistributedDataParallel(
                module,
                process_group=mesh.dp_group,
                device_ids=[mesh.device.index] if mesh.device.type == "cuda" else None,
            )
        self.optimizer = make_optimizer(self.config, model)
        self.data = TokenFile(self.config.data)
        self.sampler = SequenceSampler(
            self.data.num_sequences(self.config.seq_len), seed=self.config.seed, shuffle=self.config.shuffle
        )

    def trainer_json(self) -> dict[str, Any]:
        return {
            **self.state.to_json(),
            "optimizer": self.config.optimizer,
            "schedule": self.schedule.to_json(),
            "world_size": self.mesh.world_size,
            "tp": self.mesh.tp.world_size,
            "dp": self.mesh.dp_size,
            "model": asdict(self.cfg),
            "data": {"path": self.config.data, "num_tokens": self.data.num_tokens},
            "settings": self.config.settings(),
        }

    def restore(self, checkpoint: Committed) -> dict[str, Any]:
        loaded = load_checkpoint(
            checkpoint.path,
            model=self.model,
            optimizer=self.optimizer,
            optimizer_kind=self.config.optimizer,
            mesh=self.mesh.device_mesh,
            rank=self.mesh.rank,
        )
        saved = loaded.trainer_state
        self.state = TrainerState.from_json(saved)
        changes = {}
        old_settings = saved.get("settings", {})
        for key, value in self.config.settings().items():
            if key in ("out", "resume_from", "inject_faults", "inject_spikes"):
                continue
            if old_settings.get(key, value) != value:
                changes[key] = [old_settings.get(key), value]
        for key in ("world_size", "tp", "dp"):
            now = {"world_size": self.mesh.world_size, "tp": self.mesh.tp.world_size, "dp": self.mesh.dp_size}[key]
            if saved.get(key) != now:
                changes[key] = [saved.get(key), now]
        info: dict[str, Any] = {"changes": changes}
        if not loaded.optimizer_loaded:
            info["optimizer_state"] = f"reset: the checkpoint used {saved.get('optimizer')}"
        if not loaded.rng_restored:
            info["rng"] = "fresh: the checkpoint has no RNG state for this rank at this world size"
        return info

    # ---- faults (tests and drills) -------------------------------------------------------
    def _fire(self, kind: str, step: int) -> None:
        for fault_kind, rank, at in self.faults:
            if fault_kind != kind or at != step or rank != self.mesh.rank:
                continue
            marker = self.run_dir / "faults" / f"{kind}-{rank}-{at}.fired"
            if marker.exists():
                continue
            marker.parent.mkdir(parents=True, exist_ok=True)
            with open(marker, "w") as handle:
                handle.write(f"{time.time()}\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

    # ---- one step ------------------------------------------------------------------------
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of the batch the next step reads (on the CPU)."""
        config, mesh = self.config, self.mesh
        return local_batch(
            self.data,
            self.sampler,
            position=self.state.samples,
            global_batch=config.batch_size,
            seq_len=config.seq_len,
            dp_rank=mesh.dp_rank,
            dp_size=mesh.dp_size,
        )

    def step(self) -> None:
        config, mesh, state = self.config, self.mesh, self.state
        step = state.step + 1
        started = time.perf_counter()
        lr = self.schedule.lr_at(step, state.lr_scale)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

        inputs, targets = self.next_batch()
        inputs, targets = inputs.to(mesh.device), targets.to(mesh.device)
        count = (targets != IGNORE_INDEX).sum().to(torch.float32)
        if mesh.dp_size > 1:
            dist.all_reduce(count, group=mesh.dp_group)
        inject = step in config.inject_spikes and state.rollbacks == 0
        micro = inputs.shape[0] // config.grad_accum
        ce_total = torch.zeros((), device=mesh.device)
        aux_total = torch.zeros((), device=mesh.device)
        for index in range(config.grad_accum):
            last = index == config.grad_accum - 1
            sync = contextlib.nullcontext() if last or mesh.dp_size == 1 else self.module.no_sync()  # type: ignore[operator]
            part = slice(index * micro, (index + 1) * micro)
            with sync:
                with torch.autocast(device_type=mesh.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    ce_sum, aux = self.module(inputs[part], targets[part])
                # DDP averages over dp, so scale by dp to get sum / global count.
                loss = ce_sum * (mesh.dp_size / count)
                if aux is not None:
                    loss = loss + self.aux_coef * aux / config.grad_accum
                    aux_total += aux.detach() / config.grad_accum
                if inject:
                    loss = loss * _INJECTED_SPIKE_FACTOR
                loss.backward()
            ce_total += ce_sum.detach()
        self._fire("kill", step)

        sums = torch.stack([ce_total, aux_total])
        if mesh.dp_size > 1:
            dist.all_reduce(sums, group=mesh.dp_group)
        norm = grad_norm(self.model, self.plan_specs)
        # One decision for all ranks: rank 0's loss and norm (equal everywhere up to the
        # last bit; a broadcast makes them exactly equal).
        verdict = torch.stack([sums[0] / count, sums[1] / mesh.dp_size, norm]).to(torch.float64)
        dist.broadcast(verdict, src=0)
        loss_value, aux_value, norm_value = (float(v) for v in verdict.tolist())
        if inject:
            loss_value *= _INJECTED_SPIKE_FACTOR

        spike = self._spike_reason(loss_value, norm_value)
        if spike is None:
            if config.clip_grad > 0 and norm_value > config.clip_grad:
                grads = [p.grad for p in self.model.parameters() if p.grad is not None]
                torch._foreach_mul_(grads, config.clip_grad / (norm_value + 1e-6))
            self.optimizer.step()
            state.loss_history = (state.loss_history + [loss_value])[-config.spike.window :]
            state.consecutive_spikes = 0
        self.optimizer.zero_grad(set_to_none=True)
        state.step = step
        state.samples += config.batch_size
        state.tokens += config.batch_size * config.seq_len
        seconds = time.perf_counter() - started

        if step % config.log_every == 0 or spike is not None or step == config.steps:
            record: dict[str, Any] = {
                "step": step,
                "loss": loss_value,
                "lr": lr,
                "grad_norm": norm_value,
                "tokens_per_s": config.batch_size * config.seq_len / seconds,
                "seconds": seconds,
                "tokens": state.tokens,
            }
            if self.cfg.n_expert:
                record["aux_loss"] = aux_value
            if spike is not None:
                record["skipped"] = True
            self.book.write("step", **record)
        if spike is not None:
            state.consecutive_spikes += 1
            history = state.loss_history
            self.book.write(
                "spike",
                step=step,
                loss=loss_value,
                running_avg=sum(history) / len(history) if history else None,
                grad_norm=norm_value,
                reason=spike,
                consecutive=state.consecutive_spikes,
            )
            if state.consecutive_spikes >= config.spike.max_consecutive:
                self.rollback(step)
                return
        if step % config.save_every == 0 or step == config.steps:
            self.save(step)

    def _spike_reason(self, loss: float, norm: float) -> str | None:
        if not math.isfinite(loss):
            return "loss is not finite"
        if not math.isfinite(norm):
            return "gradient norm is not finite"
        history, policy = self.state.loss_history, self.config.spike
        if len(history) >= policy.min_history:
            average = sum(history) / len(history)
            if loss > policy.factor * average:
                return f"loss {loss:.4g} > {policy.factor} x running average {average:.4g}"
        return None

    def save(self, step: int) -> None:
        kill_in_save = any(k == "kill-in-save" and s == step and r == self.mesh.rank for k, r, s in self.faults)
        path, seconds = save_checkpoint(
            self.run_dir,
            step=step,
            model=self.model,
            optimizer=self.optimizer,
            trainer_state=self.trainer_json(),
            mesh=self.mesh.device_mesh,
            rank=self.mesh.rank,
            keep_last=self.config.keep_last,
            after_write=(lambda: self._fire("kill-in-save", step)) if kill_in_save else None,
        )
        self.book.write("checkpoint", step=step, path=str(path), seconds=round(seconds, 4))

    def rollback(self, step: int) -> None:
        """Back to the newest committed checkpoint from before this run of spikes, with a lower
        learning rate; checkpoints after it belong to the abandoned stretch and are removed."""
        state, policy = self.state, self.config.spike
        streak_start = step - state.consecutive_spikes + 1
        committed = committed_checkpoints(self.run_dir)
        before = [c for c in committed if c.step < streak_start] or committed
        lr_scale = state.lr_scale * policy.lr_backoff
        rollbacks = state.rollbacks + 1
        if not before:
            state.lr_scale, state.rollbacks, state.consecutive_spikes = lr_scale, rollbacks, 0
            self.book.write(
                "rollback",
                from_step=step,
                to_step=None,
                path=None,
                lr_scale=lr_scale,
                reason=f"{policy.max_consecutive} consecutive spikes; no committed checkpoint yet, "
                "so the learning rate is lowered in place",
            )
            return
        target = before[-1]
        dist.barrier()
        if self.mesh.is_main:
            discard_after(self.run_dir, target.step)
        dist.barrier()
        self.restore(target)
        self.state.lr_scale, self.state.rollbacks, self.state.consecutive_spikes = lr_scale, rollbacks, 0
        self.book.write(
            "rollback",
            from_step=step,
            to_step=target.step,
            path=str(target.path),
            lr_scale=lr_scale,
            reason=f"{policy.max_consecutive} consecutive spikes",
        )

    # ---- export --------------------------------------------------------------------------
    def export(self, step: int) -> Path:
        started = time.monotonic()
        dst = self.run_dir / EXPORTS / f"step_{step}"
        full = gather_for_export(self.model)
        if self.mesh.is_main:
            export_native(
                full,
                self.cfg,
                dst,
                tp=self.config.export_tp or self.mesh.tp.world_size,
                dtype=self._export_dtype(),
                extra_files=self.plan.source.tokenizer_files,
            )
        dist.barrier()
        self.book.write(
            "export",
            step=step,
            path=str(dst),
            format="native",
            tp=self.config.export_tp or self.mesh.tp.world_size,
            seconds=round(time.monotonic() - started, 4),
        )
        return dst

    def _export_dtype(self) -> str:
        return self.plan.source.dtype if self.config.export_dtype == "auto" else self.config.export_dtype


def gather_for_export(model: Transformer) -> dict[str, torch.Tensor]:
    from training.hf import gather_full_state

    return {k: v.detach().to("cpu") for k, v in gather_full_state(model).items()}


def export_native(
    state: dict[str, torch.Tensor],
    config: ModelConfig,
    dst: Path,
    *,
    tp: int,
    dtype: str,
    extra_files: tuple[Path, ...] | list[Path] = (),
) -> Path:
    """Write full tensors as the platform's native checkpoint with reshard's own writer (the
    format reshard, downloads and hosted inference read), the tokenizer files listed in its
    manifest. Built under a hidden name and renamed into place; an earlier export at ``dst``
    (a re-export after a rollback) is replaced."""
    from reshard import save_state

    building = dst.with_name(f".{dst.name}.building")
    shutil.rmtree(building, ignore_errors=True)
    building.parent.mkdir(parents=True, exist_ok=True)
    save_state(state, config, building, to="native", tp=tp, dtype=dtype, extra_files=tuple(extra_files))
    if dst.exists():
        shutil.rmtree(dst)
    os.rename(building, dst)
    return dst


def _write_run_file(plan: Plan) -> None:
    run_file = Path(plan.config.out) / RUN_FILE
    if not run_file.exists():
        fields = {key: getattr(plan.config, key) for key in _IDENTITY}
        fields["created"] = time.time()
        tmp = run_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, run_file)


def train(config: TrainConfig, *, plan: Plan | None = None) -> dict[str, Any]:
    """Run (or continue) the training run in ``config.out``; every rank calls this."""
    plan = plan or validate(config)
    mesh = init_mesh(config.tp, device=config.device)
    book = Logbook(config.out, enabled=mesh.is_main)
    session: Session | None = None
    try:
        if mesh.is_main:
            Path(config.out).mkdir(parents=True, exist_ok=True)
            _write_run_file(plan)
        dist.barrier()
        torch.manual_seed(config.seed)
        session = Session(plan, mesh, book)
        return _run(session)
    except Exception as exc:
        step = session.state.step if session is not None else None
        book.write("error", message=str(exc) or type(exc).__name__, type=type(exc).__name__, rank=mesh.rank, step=step)
        raise
    finally:
        book.close()
        close_mesh()


def _run(session: Session) -> dict[str, Any]:
    config, mesh, book = session.config, session.mesh, session.book
    # Rank 0 picks the checkpoint and tells the others: on a network file system the ranks'
    # directory listings need not agree at the same instant.
    committed = committed_checkpoints(config.out)
    pick: list[Any] = [None]
    if mesh.is_main:
        if config.resume_from is not None:
            pick = [next((c for c in committed if c.step == config.resume_from), None)]
        elif committed:
            pick = [committed[-1]]
    dist.broadcast_object_list(pick, src=0)
    chosen: Committed | None = pick[0]
    reason = ""
    if config.resume_from is not None:
        if chosen is None:
            raise UsageError("--resume-from", f"no committed checkpoint at step {config.resume_from}")
        reason = "--resume-from"
        if mesh.is_main:
            discard_after(config.out, chosen.step)
        dist.barrier()
    restart_count = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    final_export = Path(config.out) / EXPORTS / f"step_{config.steps}"
    if chosen is not None and chosen.step >= config.steps and final_export.is_dir() and reason == "":
        return {"step": chosen.step, "export": str(final_export), "already_done": True}

    session.build(from_checkpoint=chosen is not None)
    if restart_count > 0:
        book.write("restart", restart_count=restart_count)
    if chosen is not None:
        info = session.restore(chosen)
        reason = reason or ("restart" if restart_count > 0 else "rerun")
        book.write(
            "resume",
            from_step=chosen.step,
            path=str(chosen.path),
            reason=reason,
            world_size=mesh.world_size,
            tp=mesh.tp.world_size,
            dp=mesh.dp_size,
            steps=config.steps,
            flops_per_token=flops_per_token(session.cfg, config.seq_len),
            **info,
        )
    elif restart_count > 0:
        book.write(
            "resume",
            from_step=0,
            path=None,
            reason="restart",
            world_size=mesh.world_size,
            tp=mesh.tp.world_size,
            dp=mesh.dp_size,
            steps=config.steps,
            flops_per_token=flops_per_token(session.cfg, config.seq_len),
            changes={},
        )
    else:
        book.write(
            "start",
            step=0,
            world_size=mesh.world_size,
            tp=mesh.tp.world_size,
            dp=mesh.dp_size,
            model=config.model,
            data=config.data,
            steps=config.steps,
            batch_size=config.batch_size,
            seq_len=config.seq_len,
            lr=config.lr,
            flops_per_token=flops_per_token(session.cfg, config.seq_len),
            parameters=session.cfg.num_parameters(),
            settings=config.settings(),
        )
    started = time.monotonic()
    while session.state.step < config.steps:
        session.step()
    if not any(c.step == config.steps for c in committed_checkpoints(config.out)):
        session.save(config.steps)  # a rerun with more --steps than saved, or a rollback's end
    dst = session.export(config.steps)
    book.write(
        "done",
        step=session.state.step,
        tokens=session.state.tokens,
        seconds=round(time.monotonic() - started, 3),
        export=str(dst),
    )
    return {"step": session.state.step, "export": str(dst), "already_done": False}


__all__ = [
    "ModelSource",
    "OPTIMIZERS",
    "Plan",
    "SpikePolicy",
    "TrainConfig",
    "TrainerState",
    "UsageError",
    "flops_per_token",
    "grad_norm",
    "make_optimizer",
    "resolve_model",
    "train",
    "validate",
]

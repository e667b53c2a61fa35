"""The hyperparameters a user may set on a fine-tuning job, their defaults and limits, and how they become
`python -m training train` flags. `clean` checks a submitted mapping and raises InvalidInput naming the
field and saying what to change."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from access.errors import InvalidInput


@dataclass(frozen=True)
class Field:
    name: str
    kind: type  # int, float or str
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()


FIELDS: tuple[Field, ...] = (
    Field("steps", int, 100, "Optimizer steps in the whole run.", 1, None),
    Field("batch_size", int, 8, "Sequences per step over all data-parallel ranks (divisible by gpus / tp).", 1, 4096),
    Field("seq_len", int, 512, "Tokens per sequence (at most the model's context).", 8, 131072),
    Field("lr", float, 1e-5, "Peak learning rate.", 0.0, 1.0),
    Field("warmup_steps", int, 0, "Linear warmup steps (at most steps).", 0, None),
    Field("decay", str, "linear", "Decay after warmup.", choices=("linear", "cosine", "constant")),
    Field("min_lr_ratio", float, 0.1, "Decay floor, as a fraction of lr.", 0.0, 1.0),
    Field("weight_decay", float, 0.0, "AdamW weight decay.", 0.0, 1.0),
    Field("clip_grad", float, 1.0, "Global gradient-norm limit (0 turns it off).", 0.0, 1e6),
    Field("grad_accum", int, 1, "Micro-batches per step on each data-parallel rank.", 1, 1024),
    Field("optimizer", str, "adamw", "Optimizer.", choices=("adamw", "sgd")),
    Field("save_every", int, 0, "Commit a checkpoint every K steps (0: about ten per run).", 0, None),
    Field("seed", int, 0, "Seed of the data order and the dropout.", 0, 2**31 - 1),
)
BY_NAME = {field.name: field for field in FIELDS}


def defaults() -> dict[str, Any]:
    return {field.name: field.default for field in FIELDS}


def _coerce(field: Field, value: Any) -> Any:
    if field.kind is str:
        if not isinstance(value, str) or value not in field.choices:
            raise InvalidInput(f"{field.name}: choose one of {', '.join(field.choices)}.", field=field.name)
        return value
    if isinstance(value, bool) or value is None or value == "":
        raise InvalidInput(f"{field.name}: enter a number ({field.help})", field=field.name)
    try:
        number = float(value) if field.kind is float else float(str(value))
    except (TypeError, ValueError):
        raise InvalidInput(
            f"{field.name}: {value!r} is not a number; enter one ({field.help})", field=field.name
        ) from None
    if not math.isfinite(number):
        raise InvalidInput(f"{field.name}: enter a finite number.", field=field.name)
    if field.kind is int:
        if number != int(number):
            raise InvalidInput(f"{field.name}: enter a whole number, not {value}.", field=field.name)
        number = int(number)
    low, high = field.minimum, field.maximum
    if field.name == "lr" and number <= 0:
        raise InvalidInput("lr: must be above 0 (fine-tuning usually uses 1e-5 to 1e-4).", field="lr")
    if low is not None and number < low:
        raise InvalidInput(f"{field.name}: must be at least {low:g}, not {number:g}.", field=field.name)
    if high is not None and number > high:
        raise InvalidInput(f"{field.name}: must be at most {high:g}, not {number:g}.", field=field.name)
    return number


def clean(values: dict[str, Any] | None, *, dp: int, context: int | None) -> dict[str, Any]:
    """The full set of hyperparameters: `values` over the defaults, each checked; the cross-field rules
    after. `dp` is gpus / tp; `context` the base model's longest sequence (None: unknown)."""
    values = dict(values or {})
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise InvalidInput(
            f"{unknown[0]}: not a hyperparameter of fine-tuning jobs; use one of {', '.join(BY_NAME)}.",
            field=unknown[0],
        )
    cleaned = defaults()
    if context is not None and "seq_len" not in values:
        cleaned["seq_len"] = min(cleaned["seq_len"], context)
    for name, value in values.items():
        cleaned[name] = _coerce(BY_NAME[name], value)
    steps = cleaned["steps"]
    if steps > settings.FINETUNE_MAX_STEPS:
        raise InvalidInput(
            f"steps: at most {settings.FINETUNE_MAX_STEPS} (FINETUNE_MAX_STEPS), not {steps}.", field="steps"
        )
    if cleaned["warmup_steps"] > steps:
        raise InvalidInput(f"warmup_steps: must not exceed steps ({steps}).", field="warmup_steps")
    if context is not None and cleaned["seq_len"] > context:
        raise InvalidInput(
            f"seq_len: the model reads at most {context} tokens; use {context} or less.", field="seq_len"
        )
    if cleaned["batch_size"] % (dp * cleaned["grad_accum"]):
        raise InvalidInput(
            f"batch_size: {cleaned['batch_size']} is not divisible by gpus / tp x grad_accum = "
            f"{dp * cleaned['grad_accum']}; use a multiple of it.",
            field="batch_size",
        )
    if cleaned["save_every"] == 0:
        cleaned["save_every"] = max(steps // 10, 1)
    if cleaned["save_every"] > steps:
        raise InvalidInput(f"save_every: must not exceed steps ({steps}).", field="save_every")
    return cleaned


def train_flags(hyperparameters: dict[str, Any]) -> list[str]:
    """`python -m training train` flags, in a stable order."""
    flags: list[str] = []
    for field in FIELDS:
        if field.name in hyperparameters:
            flags += [f"--{field.name.replace('_', '-')}", str(hyperparameters[field.name])]
    return flags

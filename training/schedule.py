"""Learning-rate schedule: linear warmup, then linear (OPT's) or cosine decay to a floor.

A pure function of the step, so the schedule's whole state is its settings plus ``lr_scale``
(the product of the loss-spike policy's back-offs), which the checkpoint keeps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

DECAYS = ("linear", "cosine", "constant")


@dataclass(frozen=True)
class Schedule:
    lr: float  # peak learning rate
    total_steps: int
    warmup_steps: int = 0
    decay: str = "linear"
    min_lr_ratio: float = 0.0  # the floor, as a fraction of the peak

    def __post_init__(self) -> None:
        if self.decay not in DECAYS:
            raise ValueError(f"--decay {self.decay!r}: expected one of {', '.join(DECAYS)}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"--warmup-steps {self.warmup_steps}: must be between 0 and --steps {self.total_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"--min-lr-ratio {self.min_lr_ratio}: must be between 0 and 1")

    def factor(self, step: int) -> float:
        """Multiplier of the peak rate for 1-based ``step`` (the step about to be taken)."""
        if self.warmup_steps and step <= self.warmup_steps:
            return step / self.warmup_steps
        if self.decay == "constant":
            return 1.0
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
        if self.decay == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * shape

    def lr_at(self, step: int, lr_scale: float = 1.0) -> float:
        return self.lr * lr_scale * self.factor(step)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


__all__ = ["DECAYS", "Schedule"]

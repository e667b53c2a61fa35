"""``RUN_DIR/logbook.jsonl``: one JSON object per line, the single record of a training run.

Events (every one has "event" and "time", a Unix timestamp):

    start       step 0 of a new run: world_size, tp, dp, model, data, steps, batch_size,
                seq_len, lr, flops_per_token, settings
    restart     torchrun restarted the workers: restart_count (TORCHELASTIC_RESTART_COUNT)
    resume      from_step, path, reason ("restart", "rerun", "--resume-from"), world_size, tp,
                dp, changes (settings that differ from the checkpoint's)
    step        step, loss, lr, grad_norm, tokens_per_s, seconds, tokens (consumed so far),
                aux_loss (MoE), skipped (true when the spike policy skipped the update)
    spike       step, loss, running_avg, grad_norm, reason, consecutive
    rollback    from_step, to_step, path, lr_scale, reason
    checkpoint  step, path, seconds
    export      step, path, format, tp, seconds
    done        step, tokens, seconds, export
    error       message, type, rank, step

Rank 0 writes everything except ``error``, which the failing rank writes. A line cut short by a
killed process is skipped by the reader.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

LOGBOOK = "logbook.jsonl"
_DURABLE = {"start", "resume", "restart", "checkpoint", "rollback", "export", "done", "error"}


class Logbook:
    """Appends events; ``enabled=False`` (ranks other than 0) writes only errors."""

    def __init__(self, run_dir: str | os.PathLike[str], *, enabled: bool = True) -> None:
        self.path = Path(run_dir) / LOGBOOK
        self.enabled = enabled
        self._file: TextIO | None = None

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"event": event, "time": time.time(), **fields}
        if not self.enabled and event != "error":
            return record
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._file.write(json.dumps(record, sort_keys=True, allow_nan=True) + "\n")
        self._file.flush()
        if event in _DURABLE:
            os.fsync(self._file.fileno())
        return record

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_logbook(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The events in order; lines that are not complete JSON objects are skipped."""
    path = Path(run_dir) / LOGBOOK
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a training run directory?")
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "event" in record:
            events.append(record)
    return events


@dataclass
class Summary:
    state: str  # "done", "running or stopped", "failed"
    step: int
    total_steps: int | None
    last_loss: float | None
    sessions: int  # start + resume events
    restarts: int  # torchrun restarts
    reruns: int  # resumes not caused by torchrun (the command run again)
    spikes: int
    rollbacks: int
    checkpoints: int
    errors: list[str] = field(default_factory=list)
    time_lost_to_faults_s: float = 0.0
    time_lost_to_rollbacks_s: float = 0.0
    tokens_per_s: float | None = None  # median over steps
    mfu: float | None = None
    wall_s: float = 0.0
    export: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(events: list[dict[str, Any]], *, peak_tflops: float | None = None) -> Summary:
    steps = [e for e in events if e["event"] == "step"]
    step_seconds = statistics.median([e["seconds"] for e in steps if e.get("seconds")] or [0.0])
    starts = [e for e in events if e["event"] in ("start", "resume")]
    last_start = starts[-1] if starts else {}
    first_start = next((e for e in events if e["event"] == "start"), last_start)

    # Time lost to a fault: from the last step before it to the first step past that point
    # after the restart, less the one step that would have been taken anyway.
    lost_faults, lost_rollbacks = 0.0, 0.0
    last_step: dict[str, Any] | None = None
    pending: tuple[float, int] | None = None  # (time, step) of the last step before a fault
    for event in events:
        kind = event["event"]
        if kind == "resume" and last_step is not None and event.get("reason") != "--resume-from":
            pending = pending or (last_step["time"], last_step["step"])
        elif kind == "rollback":
            lost_rollbacks += max(event["from_step"] - event["to_step"], 0) * step_seconds
        elif kind == "step":
            if pending is not None and event["step"] > pending[1]:
                lost_faults += max(event["time"] - pending[0] - step_seconds, 0.0)
                pending = None
            last_step = event

    rates = [e["tokens_per_s"] for e in steps if e.get("tokens_per_s")]
    tokens_per_s = statistics.median(rates) if rates else None
    mfu = None
    flops = last_start.get("flops_per_token")
    if peak_tflops and tokens_per_s and flops:
        mfu = tokens_per_s * flops / (peak_tflops * 1e12 * last_start.get("world_size", 1))
    done = [e for e in events if e["event"] == "done"]
    errors = [f"rank {e.get('rank')}: {e.get('message')}" for e in events if e["event"] == "error"]
    final = events[-1]["event"] if events else ""
    state = "done" if done and final in ("done", "export") else "failed" if final == "error" else "running or stopped"
    exports = [e for e in events if e["event"] == "export"]
    return Summary(
        state=state,
        step=steps[-1]["step"] if steps else 0,
        total_steps=last_start.get("steps"),
        last_loss=steps[-1]["loss"] if steps else None,
        sessions=len(starts),
        restarts=sum(e["event"] == "restart" for e in events),
        reruns=sum(e["event"] == "resume" and e.get("reason") == "rerun" for e in events),
        spikes=sum(e["event"] == "spike" for e in events),
        rollbacks=sum(e["event"] == "rollback" for e in events),
        checkpoints=sum(e["event"] == "checkpoint" for e in events),
        errors=errors,
        time_lost_to_faults_s=round(lost_faults, 3),
        time_lost_to_rollbacks_s=round(lost_rollbacks, 3),
        tokens_per_s=tokens_per_s,
        mfu=mfu,
        wall_s=round(events[-1]["time"] - first_start.get("time", events[-1]["time"]), 3) if events else 0.0,
        export=exports[-1]["path"] if exports else None,
    )


def format_summary(summary: Summary) -> str:
    lines = [
        f"state            {summary.state}",
        f"step             {summary.step}" + (f" / {summary.total_steps}" if summary.total_steps else ""),
        f"last loss        {summary.last_loss:.4f}" if summary.last_loss is not None else "last loss        -",
        f"sessions         {summary.sessions} ({summary.restarts} torchrun restarts, {summary.reruns} reruns)",
        f"spikes           {summary.spikes} skipped steps, {summary.rollbacks} rollbacks",
        f"checkpoints      {summary.checkpoints}",
        f"time lost        {summary.time_lost_to_faults_s:.1f}s to faults, "
        f"{summary.time_lost_to_rollbacks_s:.1f}s to rollbacks (wall {summary.wall_s:.1f}s)",
        f"tokens/s         {summary.tokens_per_s:,.0f} (median)" if summary.tokens_per_s else "tokens/s         -",
    ]
    if summary.mfu is not None:
        lines.append(f"MFU              {summary.mfu * 100:.1f}%")
    if summary.export:
        lines.append(f"export           {summary.export}")
    lines.extend(f"error            {message}" for message in summary.errors)
    return "\n".join(lines)


__all__ = ["LOGBOOK", "Logbook", "Summary", "format_summary", "read_logbook", "summarize"]

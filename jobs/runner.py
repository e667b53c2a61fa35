"""Run a command (e.g. `torchrun --nproc-per-node 8 -m training train ...`) for a job. Plain Python: no
Django, so it runs wherever the job's worker runs.

The command starts in its own session (so its own process group): a cancel, a lost claim or a timeout
kills the whole group, torchrun's workers included, not just the launcher. Its stdout and stderr are
followed line by line, to a log file (from reader threads) and to a callback (in the calling thread,
between heartbeats).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO


@dataclass(frozen=True)
class RunResult:
    # The command's exit status; negative when a signal ended it (-9: SIGKILL).
    exit_code: int
    # Why we stopped it: "cancelled" (the heartbeat said stop), "timeout", or None (it ended by itself).
    stopped: str | None
    seconds: float


def run_command(
    argv: Sequence[str],
    *,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    log_path: str | Path | None = None,
    on_line: Callable[[str, str], None] | None = None,
    heartbeat: Callable[[], bool] | None = None,
    heartbeat_seconds: float = 30.0,
    timeout_seconds: float | None = None,
    kill_grace_seconds: float = 10.0,
) -> RunResult:
    """Run `argv` to the end and return its exit code.

    `on_line(stream, line)` gets every output line ("stdout" or "stderr", without the newline) in the
    calling thread, so it may write database rows; `log_path` gets every line as it arrives (appended,
    so the log of an earlier attempt is kept). `heartbeat()` is called every `heartbeat_seconds`; when
    it returns False the process group gets SIGTERM, then SIGKILL after `kill_grace_seconds`. An
    exception from either callback (e.g. `JobCancelled` from a progress write), or any other way out of
    this function (a Celery time limit), kills the group and propagates: no process of the group
    outlives the call.
    """
    started = time.monotonic()
    lines: queue.Queue[tuple[str, str]] = queue.Queue()
    log_file = open(log_path, "a", encoding="utf-8", buffering=1) if log_path is not None else None  # noqa: SIM115
    log_lock = threading.Lock()
    process = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env) if env is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: killpg reaches every descendant
        text=True,
        errors="replace",
        bufsize=1,
    )

    def follow(stream_name: str, pipe: IO[str]) -> None:
        with pipe:
            for raw in pipe:
                line = raw.rstrip("\n")
                if log_file is not None:
                    with log_lock:
                        log_file.write(f"{line}\n")
                lines.put((stream_name, line))

    def deliver(wait_seconds: float) -> None:
        """Hand queued lines to on_line, waiting up to `wait_seconds` for the first."""
        try:
            item = lines.get(timeout=max(wait_seconds, 0.0))
        except queue.Empty:
            return
        while True:
            if on_line is not None:
                on_line(*item)
            try:
                item = lines.get_nowait()
            except queue.Empty:
                return

    assert process.stdout is not None and process.stderr is not None
    readers = [
        threading.Thread(target=follow, args=("stdout", process.stdout), daemon=True),
        threading.Thread(target=follow, args=("stderr", process.stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    stopped: str | None = None
    next_beat = started + heartbeat_seconds
    try:
        while process.poll() is None:
            now = time.monotonic()
            if timeout_seconds is not None and now - started >= timeout_seconds:
                stopped = "timeout"
                break
            if heartbeat is not None and now >= next_beat:
                next_beat = now + heartbeat_seconds
                if not heartbeat():
                    stopped = "cancelled"
                    break
            deliver(0.2)
        if stopped is not None:
            _terminate_group(process, grace_seconds=kill_grace_seconds)
        else:
            _kill_group(process.pid)  # stragglers of a finished command would hold its pipes open
            for reader in readers:
                reader.join(timeout=30)
            deliver(0)  # the rest of the output
    finally:
        # Also on an exception: leave no process of the group behind.
        _kill_group(process.pid)
        if process.poll() is None:
            process.wait()
        for reader in readers:
            reader.join(timeout=5)
        if log_file is not None:
            log_file.close()
    return RunResult(exit_code=process.returncode, stopped=stopped, seconds=time.monotonic() - started)


def _terminate_group(process: subprocess.Popen[str], *, grace_seconds: float) -> None:
    """SIGTERM to the group (torchrun forwards it and its workers may save), then SIGKILL."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        pass


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already gone

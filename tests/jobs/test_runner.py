"""The subprocess runner on real processes: no Django, no database."""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from jobs.runner import run_command
from tests.jobs.conftest import live_group_members

SLEEPER = textwrap.dedent(
    """
    import os, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print(os.getpgrp(), child.pid, flush=True)
    time.sleep(120)
    """
)


def wait_until_group_gone(pgid: int) -> list[int]:
    deadline = time.monotonic() + 10
    while live_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return live_group_members(pgid)


def test_follows_stdout_and_stderr_line_by_line_to_the_callback_and_the_log(tmp_path: Path) -> None:
    script = "import sys\nfor i in range(3):\n    print(f'step {i}', flush=True)\nprint('warn', file=sys.stderr)\nsys.exit(3)"
    seen: list[tuple[str, str]] = []
    beats: list[int] = []
    log_path = tmp_path / "job.log"
    log_path.write_text("earlier attempt\n")
    result = run_command(
        [sys.executable, "-c", script],
        log_path=log_path,
        on_line=lambda stream, line: seen.append((stream, line)),
        heartbeat=lambda: beats.append(1) is None,
        heartbeat_seconds=0.01,
    )
    assert result.exit_code == 3 and result.stopped is None
    assert [line for stream, line in seen if stream == "stdout"] == ["step 0", "step 1", "step 2"]
    assert ("stderr", "warn") in seen
    logged = log_path.read_text().splitlines()
    assert logged[0] == "earlier attempt" and sorted(logged[1:]) == ["step 0", "step 1", "step 2", "warn"]


def test_an_exception_in_the_line_callback_stops_the_command_and_its_group() -> None:
    """E.g. a progress write that finds the job cancelled raises JobCancelled from on_line."""

    def stop_at_first_line(stream: str, line: str) -> None:
        raise LookupError(line)

    with pytest.raises(LookupError) as error:
        run_command([sys.executable, "-c", SLEEPER], on_line=stop_at_first_line)
    assert wait_until_group_gone(int(str(error.value).split()[0])) == []


def test_the_line_callback_runs_in_the_calling_thread() -> None:
    threads: set[int] = set()
    run_command(
        [sys.executable, "-c", "print('a'); print('b')"],
        on_line=lambda stream, line: threads.add(threading.get_ident()),
    )
    assert threads == {threading.get_ident()}


def test_a_false_heartbeat_kills_the_whole_process_group() -> None:
    lines: list[str] = []
    result = run_command(
        [sys.executable, "-c", SLEEPER],
        on_line=lambda stream, line: lines.append(line),
        heartbeat=lambda: not lines,  # stop once the command has started its child
        heartbeat_seconds=0.1,
        kill_grace_seconds=1,
    )
    assert result.stopped == "cancelled" and result.exit_code < 0
    pgid = int(lines[0].split()[0])
    assert pgid != os.getpgrp()
    assert wait_until_group_gone(pgid) == []


def test_a_timeout_kills_the_whole_process_group() -> None:
    lines: list[str] = []
    result = run_command(
        [sys.executable, "-c", SLEEPER],
        on_line=lambda stream, line: lines.append(line),
        timeout_seconds=2,
        kill_grace_seconds=1,
    )
    assert result.stopped == "timeout" and result.exit_code < 0
    assert wait_until_group_gone(int(lines[0].split()[0])) == []


def test_an_exception_in_the_caller_leaves_no_process_behind() -> None:
    """E.g. Celery's soft time limit raised inside the heartbeat."""
    lines: list[str] = []

    def heartbeat() -> bool:
        if lines:
            raise TimeoutError("soft time limit")
        return True

    with pytest.raises(TimeoutError):
        run_command(
            [sys.executable, "-c", SLEEPER],
            on_line=lambda stream, line: lines.append(line),
            heartbeat=heartbeat,
            heartbeat_seconds=0.1,
        )
    assert wait_until_group_gone(int(lines[0].split()[0])) == []

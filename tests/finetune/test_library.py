"""The plain-Python pieces: the engine's tokenizer progress callback, the logbook follower, and the flags
the jobs pass being the engine's own (parsed by its CLI parser). No database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune import hyperparameters as hp
from finetune.runs import LogbookFollower
from tests.inference_worker._tiny import make_checkpoint


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint("opt", tmp_path_factory.mktemp("tok") / "opt")


def test_tokenize_reports_progress_and_a_raising_callback_leaves_no_file(tokenizer_dir: Path, tmp_path: Path) -> None:
    from training.tokenize import tokenize_file

    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": f"hello world {i}"}) + "\n" for i in range(1500)))
    calls: list[tuple[int, int, int]] = []
    header = tokenize_file(
        source,
        tokenizer=tokenizer_dir,
        out=tmp_path / "a.tokens",
        progress=False,
        on_progress=lambda *f: calls.append(f),
    )
    assert [docs for _, docs, _ in calls] == [512, 1024]  # after each full batch of documents
    assert [b for b, _, _ in calls] == sorted(b for b, _, _ in calls) and calls[-1][0] < source.stat().st_size
    assert calls[-1][2] < header["num_tokens"] and header["num_docs"] == 1500

    def stop(*figures: int) -> None:
        raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError):
        tokenize_file(source, tokenizer=tokenizer_dir, out=tmp_path / "b.tokens", progress=False, on_progress=stop)
    assert not list(tmp_path.glob("b.tokens*"))


def test_logbook_follower_reads_only_complete_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "logbook.jsonl"
    path.write_text('{"event": "start"}\n')
    follower = LogbookFollower(path)  # from the end: an earlier attempt's events are already on the row
    assert follower.poll() == []
    with open(path, "a") as handle:
        handle.write('{"event": "step", "step": 1}\n{"event": "st')
    assert follower.poll() == [{"event": "step", "step": 1}]
    with open(path, "a") as handle:
        handle.write('ep", "step": 2}\nnot json\n')
    assert follower.poll() == [{"event": "step", "step": 2}]
    assert LogbookFollower(tmp_path / "missing.jsonl").poll() == []


def test_job_flags_are_the_engines_own(settings: object) -> None:
    from training.cli import _parser

    values = hp.clean({"steps": 50, "optimizer": "sgd", "decay": "cosine"}, dp=2, context=128)
    args = _parser().parse_args(["train", "--model", "m", "--data", "d", "--out", "o", *hp.train_flags(values)])
    assert (args.steps, args.batch_size, args.seq_len, args.save_every) == (50, 8, 128, 5)
    assert (args.optimizer, args.decay, args.lr, args.grad_accum, args.clip_grad) == ("sgd", "cosine", 1e-5, 1, 1.0)


def test_kill_leftover_kills_the_orphaned_group_of_this_run_only(tmp_path: Path) -> None:
    """After its leader died (torchrun killed with its worker), the group's other processes are found and
    killed; a group that does not name this run directory is left alone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from finetune.runs import PID_FILE, _group_members, kill_leftover

    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', '--out', sys.argv[1]]); "
        "time.sleep(120)"
    )
    run_dir, other_dir = tmp_path / "run", tmp_path / "other"
    groups = []
    for folder in (run_dir, other_dir):
        folder.mkdir()
        leader = subprocess.Popen([sys.executable, "-c", code, str(folder)], start_new_session=True)
        groups.append(leader)
        (folder / PID_FILE).write_text(f"{leader.pid}\n")
    try:
        for leader in groups:
            deadline = time.monotonic() + 30
            while len(_group_members(leader.pid)) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(_group_members(leader.pid)) == 2
        ours = groups[0]
        os.kill(ours.pid, signal.SIGKILL)
        ours.wait()
        assert len(_group_members(ours.pid)) == 1  # the orphan writes on
        # The other run's pid file, pointed at our group: not its run, not killed.
        (other_dir / PID_FILE).write_text(f"{ours.pid}\n")
        assert kill_leftover(other_dir) is False and len(_group_members(ours.pid)) == 1
        (run_dir / PID_FILE).write_text(f"{ours.pid}\n")
        assert kill_leftover(run_dir) is True
        assert _group_members(ours.pid) == [] and not (run_dir / PID_FILE).exists()
    finally:
        for leader in groups:
            try:
                os.killpg(leader.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            leader.wait()


def test_line_chart_keeps_the_ends_when_it_thins_a_long_curve() -> None:
    from gateway.charts import line_chart

    chart = line_chart([(float(x), 10.0 - x / 1000) for x in range(1, 2001)], marks=[(500.0, "resume")])
    points = [tuple(map(float, p.split(","))) for p in chart.points.split()]
    assert chart.count == len(points) <= 601
    assert points[0] == (0.0, chart.top) and points[-1] == (chart.width, chart.baseline)  # first high, last low
    assert (chart.x_min, chart.x_max) == (1.0, 2000.0) and [m.label for m in chart.marks] == ["resume"]
    flat = line_chart([(1.0, 2.0), (2.0, 2.0)])  # a constant curve still has a height to divide by
    assert flat.count == 2 and "nan" not in flat.points

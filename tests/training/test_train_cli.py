"""`python -m training train` refuses bad flag combinations before any work, naming the flag;
the learning-rate schedule; the logbook summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from _train_helpers import train_args, write_config, write_tokens

from training.cli import main
from training.logbook import summarize
from training.schedule import Schedule


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    return {"data": write_tokens(root / "d.tokens"), "model": write_config(root / "tiny.json"), "root": root}


@pytest.mark.parametrize(
    ("world", "flags", "flag", "words"),
    [
        (4, {"tp": 3}, "--tp", "does not divide the 4 processes"),
        (3, {"tp": 3}, "--tp", "does not divide n_head=4"),
        (4, {"tp": 2, "batch_size": 3}, "--batch-size", "dp=2"),
        (2, {"batch_size": 4, "grad_accum": 3}, "--grad-accum", "does not divide the 2 sequences"),
        (1, {"seq_len": 65}, "--seq-len", "context of 64"),
        (1, {"steps": 0}, "--steps", "at least 1"),
        (1, {"warmup_steps": 9}, "--warmup-steps", "between 0 and --steps 8"),
        (1, {"optimizer": "lion"}, None, None),  # argparse's own choices check
        (1, {"lr_backoff": 1.5}, "--lr-backoff", "(0, 1]"),
        (1, {"inject_fault": ["explode:1@2"]}, "--inject-fault", "KIND"),
    ],
)
def test_invalid_combinations_fail_before_any_work(
    files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    world: int,
    flags: dict[str, object],
    flag: str | None,
    words: str | None,
) -> None:
    monkeypatch.setenv("WORLD_SIZE", str(world))
    out = tmp_path / "run"
    if flag is None:
        with pytest.raises(SystemExit) as exited:
            main(["train", *train_args(files["model"], files["data"], out, **flags)])
        assert exited.value.code == 2
    else:
        assert main(["train", *train_args(files["model"], files["data"], out, **flags)]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: {flag}:") and words in error
    assert not out.exists()


def test_bad_model_and_data_are_named(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["train", *train_args("no-such-model", files["data"], out)]) == 2
    assert capsys.readouterr().err.startswith("error: --model: 'no-such-model' is not")
    assert main(["train", *train_args(files["model"], tmp_path / "missing.tokens", out)]) == 2
    assert capsys.readouterr().err.startswith("error: --data:")
    small_vocab = write_config(tmp_path / "small.json", vocab_size=50)
    assert main(["train", *train_args(small_vocab, files["data"], out)]) == 2
    assert "another tokenizer" in capsys.readouterr().err
    assert not out.exists()


def test_rerun_into_a_run_dir_must_keep_what_is_trained(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(
        json.dumps({"model": str(files["model"]), "data": str(files["data"]), "seq_len": 16, "seed": 0})
    )
    assert main(["train", *train_args(files["model"], files["data"], out, seed=1)]) == 2
    assert "error: --seed:" in capsys.readouterr().err
    assert main(["train", *train_args(files["model"], files["data"], out, resume_from=4)]) == 2
    assert "error: --resume-from: no committed checkpoint at step 4" in capsys.readouterr().err


def test_schedule_warmup_then_linear_or_cosine() -> None:
    linear = Schedule(lr=1.0, total_steps=10, warmup_steps=2, decay="linear", min_lr_ratio=0.1)
    assert [linear.factor(s) for s in (1, 2)] == [0.5, 1.0]
    assert math.isclose(linear.factor(6), 0.1 + 0.9 * 0.5)
    assert math.isclose(linear.factor(10), 0.1)
    cosine = Schedule(lr=2.0, total_steps=10, warmup_steps=0, decay="cosine", min_lr_ratio=0.0)
    assert math.isclose(cosine.lr_at(5, lr_scale=0.5), 0.5)  # halfway down the cosine, scaled
    assert cosine.factor(10) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="--warmup-steps"):
        Schedule(lr=1.0, total_steps=4, warmup_steps=5)


def test_logbook_summary_counts_faults_and_mfu() -> None:
    t = 1000.0
    events = [
        {"event": "start", "time": t, "steps": 4, "world_size": 2, "flops_per_token": 1e9},
        {"event": "step", "time": t + 1, "step": 1, "loss": 3.0, "tokens_per_s": 1000.0, "seconds": 1.0},
        {"event": "step", "time": t + 2, "step": 2, "loss": 2.9, "tokens_per_s": 1000.0, "seconds": 1.0},
        {"event": "restart", "time": t + 20, "restart_count": 1},
        {
            "event": "resume",
            "time": t + 21,
            "from_step": 2,
            "reason": "restart",
            "world_size": 2,
            "flops_per_token": 1e9,
        },
        {
            "event": "step",
            "time": t + 22,
            "step": 3,
            "loss": 9.0,
            "tokens_per_s": 1000.0,
            "seconds": 1.0,
            "skipped": True,
        },
        {"event": "spike", "time": t + 22, "step": 3},
        {"event": "step", "time": t + 23, "step": 4, "loss": 2.8, "tokens_per_s": 1000.0, "seconds": 1.0},
        {"event": "done", "time": t + 24, "step": 4},
    ]
    summary = summarize(events, peak_tflops=1.0)
    assert summary.state == "done" and summary.restarts == 1 and summary.spikes == 1 and summary.sessions == 2
    assert summary.time_lost_to_faults_s == pytest.approx(19.0)  # step 2 at t+2, step 3 at t+22, less one step
    assert summary.mfu == pytest.approx(1000.0 * 1e9 / (1e12 * 2))

"""Real training runs (`python -m training train`, under torchrun for more than one rank, gloo on
CPU): faults with SIGKILL, resume bit for bit, resume at another dp and tp, tp x dp against one
process, the loss-spike policy, exports in the native format, fine-tuning from transformers."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from _train_helpers import events, run_cli, run_train, step_losses, train_args, write_config, write_tokens
from _workers import hf_model

import reshard
from training.checkpoint import committed_checkpoints
from training.data import SequenceSampler, TokenFile, local_batch
from training.logbook import read_logbook, summarize

pytestmark = pytest.mark.slow


def _ok(done: Any) -> None:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    return {
        "root": root,
        "data": write_tokens(root / "d.tokens"),
        "model": write_config(root / "tiny.json"),
        # GQA llama for the tp x dp comparison (tp=2 splits its 2 KV heads)
        "llama": write_config(
            root / "llama.json", family="llama", name="tiny-llama", n_kv_head=2, ffn_dim=48, norm_eps=1e-6
        ),
    }


@pytest.fixture(scope="module")
def reference(files: dict[str, Path]) -> Path:
    """The uninterrupted run: 2 ranks (tp=1 x dp=2), 8 steps, a checkpoint every 2."""
    out = files["root"] / "reference"
    _ok(run_train(train_args(files["model"], files["data"], out, keep_last=4), nproc=2))
    return out


def test_reference_run_writes_logbook_checkpoints_and_a_native_export(reference: Path) -> None:
    log = events(reference)
    kinds = [e["event"] for e in log]
    assert kinds[0] == "start" and kinds[-2:] == ["export", "done"]
    assert log[0]["world_size"] == 2 and log[0]["dp"] == 2 and log[0]["tp"] == 1
    steps = [e for e in log if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 9))
    for e in steps:
        assert set(e) >= {"step", "loss", "lr", "grad_norm", "tokens_per_s", "time"}
    assert [e["step"] for e in log if e["event"] == "checkpoint"] == [2, 4, 6, 8]
    assert [c.step for c in committed_checkpoints(reference)] == [2, 4, 6, 8]
    export = reference / "export" / "step_8"
    assert reshard.verify(export).format == "native"
    model = reshard.load_native(export)  # what hosted inference loads
    assert model.config.n_layer == 2


def test_sigkill_mid_save_and_mid_step_then_resume_bit_for_bit(files: dict[str, Path], reference: Path) -> None:
    out = files["root"] / "faulty"
    args = train_args(files["model"], files["data"], out, keep_last=4, inject_fault=["kill-in-save:1@4", "kill:1@7"])
    # 1. Rank 1 is SIGKILLed after writing its part of step 4's checkpoint, before the commit;
    #    without restarts torchrun gives up.
    crashed = run_train(args, nproc=2, max_restarts=0)
    assert crashed.returncode != 0
    assert [c.step for c in committed_checkpoints(out)] == [2]
    partial = out / "checkpoints" / "step_4.tmp"
    assert (partial / ".metadata").is_file() and not (partial / "COMMITTED").exists()

    # 2. The same command again (idempotent): it resumes from step 2, ignoring the uncommitted
    #    save; rank 1 is SIGKILLed mid-step 7 and torchrun restarts the group, which resumes
    #    from step 6 and finishes.
    _ok(run_train(args, nproc=2, max_restarts=1))
    log = events(out)
    resumes = [(e["from_step"], e["reason"]) for e in log if e["event"] == "resume"]
    assert resumes == [(2, "rerun"), (6, "restart")]
    assert [e["restart_count"] for e in log if e["event"] == "restart"] == [1]
    assert (out / "faults" / "kill-1-7.fired").exists()
    assert step_losses(out) == step_losses(reference)  # exact float equality, every step
    replayed = [e["loss"] for e in log if e["event"] == "step" and e["step"] in (3, 4)]
    assert len(replayed) == 4 and replayed[:2] == replayed[2:]
    name = "model-rank-00000-of-00001.safetensors"
    assert _sha(out / "export" / "step_8" / name) == _sha(reference / "export" / "step_8" / name)
    assert not (out / "checkpoints" / "step_4.tmp").exists()  # cleaned by a later commit
    summary = summarize(read_logbook(out))
    assert summary.restarts == 1 and summary.reruns == 1 and summary.state == "done"
    assert summary.time_lost_to_faults_s > 0


def test_rerun_of_a_finished_run_does_nothing(files: dict[str, Path], reference: Path) -> None:
    before = (reference / "logbook.jsonl").read_text()
    done = run_train(train_args(files["model"], files["data"], reference, keep_last=4))
    _ok(done)
    assert "already complete at step 8" in done.stdout
    assert (reference / "logbook.jsonl").read_text() == before


@pytest.mark.parametrize(("nproc", "tp"), [(1, 1), (2, 2)], ids=["dp2-to-dp1", "tp1-to-tp2"])
def test_resume_at_another_dp_or_tp(files: dict[str, Path], reference: Path, nproc: int, tp: int) -> None:
    out = files["root"] / f"moved-{nproc}-{tp}"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(reference / "checkpoints" / "step_4", out / "checkpoints" / "step_4")
    shutil.copy(reference / "run.json", out / "run.json")
    _ok(run_train(train_args(files["model"], files["data"], out, tp=tp), nproc=nproc))
    resume = next(e for e in events(out) if e["event"] == "resume")
    assert resume["from_step"] == 4 and resume["dp"] == nproc // tp and resume["tp"] == tp
    ours, ref = step_losses(out), step_losses(reference)
    assert sorted(ours) == [5, 6, 7, 8]
    for step, loss in ours.items():
        assert abs(loss - ref[step]) <= 1e-5, (step, loss, ref[step])


def test_tp2_x_dp2_matches_tp1_x_dp1(files: dict[str, Path]) -> None:
    single = files["root"] / "llama-1"
    grid = files["root"] / "llama-4"
    common = {"steps": 4, "save_every": 4, "grad_accum": 1}
    _ok(run_train(train_args(files["llama"], files["data"], single, **common)))
    _ok(run_train(train_args(files["llama"], files["data"], grid, tp=2, **common), nproc=4))
    assert events(grid)[0]["tp"] == 2 and events(grid)[0]["dp"] == 2
    one, four = step_losses(single), step_losses(grid)
    assert sorted(one) == sorted(four) == [1, 2, 3, 4]
    for step in one:
        assert abs(one[step] - four[step]) <= 1e-5, (step, one[step], four[step])


def test_spikes_are_skipped_and_repeated_spikes_roll_back_with_a_lower_lr(files: dict[str, Path]) -> None:
    out = files["root"] / "spiky"
    flags = {
        "steps": 10,
        "spike_min_history": 2,
        "max_consecutive_spikes": 2,
        "lr_backoff": 0.5,
        "inject_spikes": "5,7,8",
        "grad_accum": 2,
    }
    _ok(run_train(train_args(files["model"], files["data"], out, **flags)))
    log = events(out)
    spikes = [e for e in log if e["event"] == "spike"]
    assert [(e["step"], e["consecutive"]) for e in spikes] == [(5, 1), (7, 1), (8, 2)]
    skipped = {e["step"] for e in log if e["event"] == "step" and e.get("skipped")}
    assert skipped == {5, 7, 8}
    (rollback,) = [e for e in log if e["event"] == "rollback"]
    assert (rollback["from_step"], rollback["to_step"], rollback["lr_scale"]) == (8, 6, 0.5)
    # Steps 7 and 8 run again from step 6's checkpoint at half the learning rate.
    at = {(e["step"], i): e for i, e in enumerate(log) if e["event"] == "step"}
    first_7 = next(e for (s, _), e in sorted(at.items(), key=lambda kv: kv[0][1]) if s == 7)
    replay_7 = [e for (s, _), e in sorted(at.items(), key=lambda kv: kv[0][1]) if s == 7][-1]
    assert replay_7["lr"] == pytest.approx(first_7["lr"] * 0.5)
    # A skipped step leaves the weights alone: replayed step 7 (same weights, same batch) has
    # the loss the spiked pass had before the injected x1000.
    assert replay_7["loss"] == pytest.approx(first_7["loss"] / 1000.0, rel=1e-6)
    assert not replay_7.get("skipped") and log[-1]["event"] == "done"
    summary = summarize(log)
    assert summary.spikes == 3 and summary.rollbacks == 1


def test_export_on_demand_at_another_tp(files: dict[str, Path], reference: Path) -> None:
    dst = files["root"] / "exported-tp2"
    done = run_cli("export", str(reference), "--step", "8", "--tp", "2", "--out", str(dst))
    _ok(done)
    assert reshard.verify(dst).tp == 2
    at_tp2, at_tp1 = reshard.sources.open_source(dst), reshard.sources.open_source(reference / "export" / "step_8")
    try:
        for name in at_tp1.layout.names:
            assert torch.equal(at_tp2.read(name), at_tp1.read(name)), name
    finally:
        at_tp2.close()
        at_tp1.close()
    assert events(reference)[-1]["event"] == "export" and events(reference)[-1]["on_demand"] is True


def _first_batch(data: Path, seq_len: int, batch: int, seed: int = 0) -> torch.Tensor:
    tokens = TokenFile(data)
    sampler = SequenceSampler(tokens.num_sequences(seq_len), seed=seed)
    inputs, targets = local_batch(
        tokens, sampler, position=0, global_batch=batch, seq_len=seq_len, dp_rank=0, dp_size=1
    )
    return torch.cat([inputs, targets[:, -1:]], dim=1)  # (B, L + 1)


@pytest.mark.parametrize(("name", "nproc"), [("opt", 1), ("mixtral", 2)])
def test_fine_tuning_first_step_loss_equals_transformers(
    files: dict[str, Path], hf_checkpoints: dict[str, Path], name: str, nproc: int
) -> None:
    """End to end: --model a transformers directory; the first step's logged loss is
    transformers' loss on the same weights and the same batch (at tp=nproc)."""
    out = files["root"] / f"finetune-{name}"
    _ok(run_train(train_args(hf_checkpoints[name], files["data"], out, steps=1, tp=nproc), nproc=nproc))
    step = next(e for e in events(out) if e["event"] == "step")
    seq = _first_batch(files["data"], seq_len=16, batch=4)
    extra = {"output_router_logits": True} if name == "mixtral" else {}
    with torch.no_grad():
        ref = hf_model(name)(input_ids=seq[:, :-1], labels=seq[:, 1:], shift_labels=seq[:, 1:].contiguous(), **extra)
    ours = step["loss"] + (0.001 * step["aux_loss"] if name == "mixtral" else 0.0)  # router_aux_loss_coef
    assert abs(ours - ref.loss.item()) <= 1e-5
    export = out / "export" / "step_1"
    assert reshard.verify(export).tp == nproc

"""CLI, determinism, restartability and verify."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import reshard
from reshard.sources import native_file_name

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "reshard", *args], capture_output=True, text=True, env=env, cwd=ROOT)


def test_cli_inspect_convert_verify(metaseq_fsdp: Path, tmp_path: Path) -> None:
    proc = _cli("inspect", str(metaseq_fsdp), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["format"] == "metaseq-fsdp" and info["tp"] == 2 and info["dtype"] == "float32"
    assert info["architecture"]["n_layer"] == 2 and len(info["files"]) == 6
    proc = _cli("convert", str(metaseq_fsdp), str(tmp_path / "n"), "--to", "native", "--tp", "4")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"converted {tmp_path / 'n'}") and "tensors" in proc.stderr  # progress bar
    proc = _cli("verify", str(tmp_path / "n"), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["ok"] is True
    # sha256sum -c compatible
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path / "n", capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    # a flipped byte is a verification failure (exit 4)
    rank = tmp_path / "n" / native_file_name(1, 4)
    data = bytearray(rank.read_bytes())
    data[-1] ^= 0xFF
    rank.write_bytes(bytes(data))
    proc = _cli("verify", str(tmp_path / "n"))
    assert proc.returncode == 4 and "sha256" in proc.stderr
    assert _cli("inspect", str(tmp_path / "nope")).returncode == 3


def test_convert_is_deterministic(metaseq_fsdp: Path, hf_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    for i in range(2):
        reshard.convert(metaseq_fsdp, tmp_path / f"native{i}", to="native", tp=2)
        reshard.convert(metaseq_fsdp, tmp_path / f"hf{i}", to="hf")
        reshard.convert(metaseq_fsdp, tmp_path / f"ms{i}", to="metaseq", tp=2)
        reshard.convert(hf_checkpoints["mixtral"], tmp_path / f"mx{i}", to="native", tp=2, dtype="bf16")
    for kind in ("native", "hf", "ms", "mx"):
        assert (tmp_path / f"{kind}0" / "SHA256SUMS").read_text() == (tmp_path / f"{kind}1" / "SHA256SUMS").read_text()
        assert (tmp_path / f"{kind}0" / "manifest.json").read_bytes() == (
            tmp_path / f"{kind}1" / "manifest.json"
        ).read_bytes()


def test_killed_run_is_cleaned_up_and_retry_is_identical(metaseq_fsdp: Path, tmp_path: Path) -> None:
    first = reshard.convert(metaseq_fsdp, tmp_path / "ref", to="native")
    # What a killed conversion leaves: a temp dir with partial files and an unlocked lock file.
    stale = tmp_path / ".out.reshard-tmp-99999"
    stale.mkdir()
    (stale / ".lock").write_text("")
    (stale / native_file_name(0, 2)).write_bytes(b"partial")
    second = reshard.convert(metaseq_fsdp, tmp_path / "out", to="native")
    assert not stale.exists()
    assert [(f.path, f.sha256) for f in first.files] == [(f.path, f.sha256) for f in second.files]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "ref"]


def test_convert_result_and_progress(metaseq_fsdp: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int, int, int]] = []
    result = reshard.convert(metaseq_fsdp, tmp_path / "out", to="native", tp=2, progress=lambda *a: seen.append(a))
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] and seen[-1][2] == seen[-1][3]
    assert result.parameter_count == reshard.inspect(metaseq_fsdp).parameter_count
    assert {f.path for f in result.files} == {
        "config.json",
        "manifest.json",
        native_file_name(0, 2),
        native_file_name(1, 2),
    }
    assert all(f.size == (tmp_path / "out" / f.path).stat().st_size for f in result.files)


def test_verify_against_detects_wrong_weights(metaseq_fsdp: Path, metaseq_tp: Path, tmp_path: Path) -> None:
    from reshard.testing import metaseq_parts, random_state, write_metaseq_tp
    from tests.reshard.cases import OPT

    other = tmp_path / "other"
    write_metaseq_tp(metaseq_parts(random_state(OPT, seed=7), OPT, 1), OPT, other)
    reshard.convert(other, tmp_path / "n", to="native", tp=1)
    with pytest.raises(reshard.VerificationError, match="logits differ"):
        reshard.verify(tmp_path / "n", against=metaseq_fsdp)
    assert reshard.verify(tmp_path / "n", against=other).numerics["max_abs_diff"] == 0.0

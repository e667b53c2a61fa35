"""Bad inputs fail with the documented error and exit code, and leave nothing behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import reshard
from reshard.testing import metaseq_parts, write_metaseq_tp
from tests.reshard.cases import OPT

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "reshard", *args], capture_output=True, text=True, env=env, cwd=ROOT)


def _nothing_left(parent: Path, name: str) -> bool:
    return not any(p.name == name or p.name.startswith(f".{name}.reshard-tmp-") for p in parent.iterdir())


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path: Path, opt_state: dict[str, torch.Tensor]) -> None:
    src = tmp_path / "src"
    write_metaseq_tp(metaseq_parts(opt_state, OPT, 1), OPT, src)
    marker = tmp_path / "PWNED"
    file = src / "reshard-model_part-0.pt"
    obj = torch.load(file, weights_only=True)
    obj["extra_state"] = {"payload": _Evil(marker)}
    torch.save(obj, file)
    with pytest.raises(reshard.UnsafePickleError) as info:
        reshard.convert(src, tmp_path / "out", to="native")
    assert "posix.system" in str(info.value) or "os.system" in str(info.value)
    assert info.value.exit_code == 5
    assert not marker.exists()
    assert _nothing_left(tmp_path, "out")
    proc = _cli("convert", str(src), str(tmp_path / "out"), "--to", "native", "--quiet")
    assert proc.returncode == 5 and "system" in proc.stderr and proc.stderr.startswith("reshard: error:")
    assert not marker.exists() and _nothing_left(tmp_path, "out")


def test_corrupt_and_truncated_safetensors(tmp_path: Path, hf_checkpoints: dict[str, Path]) -> None:
    for damage in ("truncate", "corrupt-header"):
        src = tmp_path / damage
        shutil.copytree(hf_checkpoints["llama"], src)
        file = src / "model.safetensors"
        data = file.read_bytes()
        file.write_bytes(data[: len(data) - 100] if damage == "truncate" else data[:8] + b"{not json" + data[17:])
        with pytest.raises(reshard.FormatError, match="truncated|corrupt"):
            reshard.convert(src, tmp_path / "out", to="native")
        assert _nothing_left(tmp_path, "out")


def test_truncated_and_missing_fsdp_shards(tmp_path: Path, metaseq_fsdp: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(metaseq_fsdp, src)
    (src / "checkpoint_last-model_part-1-shard1.pt").unlink()
    with pytest.raises(reshard.FormatError, match="missing shard file"):
        reshard.inspect(src)
    shutil.rmtree(src)
    shutil.copytree(metaseq_fsdp, src)
    file = src / "checkpoint_last-model_part-0-shard2.pt"
    file.write_bytes(file.read_bytes()[:-500])
    with pytest.raises(reshard.FormatError):
        reshard.convert(src, tmp_path / "out", to="native")
    assert _nothing_left(tmp_path, "out")


def test_unknown_and_missing_keys_are_listed(tmp_path: Path, opt_state: dict[str, torch.Tensor]) -> None:
    parts = metaseq_parts(opt_state, OPT, 2)
    parts[0]["decoder.layers.0.self_attn.mystery.weight"] = torch.zeros(3)
    del parts[1]["decoder.layers.1.fc2.bias"]
    write_metaseq_tp(parts, OPT, tmp_path / "src")
    with pytest.raises(reshard.MismatchError) as info:
        reshard.convert(tmp_path / "src", tmp_path / "out", to="native")
    assert "decoder.layers.0.self_attn.mystery.weight" in info.value.unused
    assert info.value.exit_code == 3
    parts[0].pop("decoder.layers.0.self_attn.mystery.weight")
    write_metaseq_tp(parts, OPT, tmp_path / "src2")
    with pytest.raises(reshard.MismatchError) as info:
        reshard.convert(tmp_path / "src2", tmp_path / "out", to="native")
    assert info.value.missing == ["decoder.layers.1.fc2.bias"]
    assert _nothing_left(tmp_path, "out")


def test_hf_unknown_tensor_and_untied_head(tmp_path: Path, hf_checkpoints: dict[str, Path]) -> None:
    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(hf_checkpoints["opt"], src)
    tensors = load_file(str(src / "model.safetensors"))
    save_file(
        {**tensors, "model.decoder.extra.weight": torch.zeros(2)},
        str(src / "model.safetensors"),
        metadata={"format": "pt"},
    )
    with pytest.raises(reshard.MismatchError, match="model.decoder.extra.weight"):
        reshard.inspect(src)
    embed = tensors["model.decoder.embed_tokens.weight"]
    save_file({**tensors, "lm_head.weight": embed + 1}, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(reshard.MismatchError, match="lm_head.weight"):
        reshard.convert(src, tmp_path / "out", to="native")
    assert _nothing_left(tmp_path, "out")


def test_mismatched_architecture(tmp_path: Path, opt_state: dict[str, torch.Tensor]) -> None:
    write_metaseq_tp(metaseq_parts(opt_state, OPT, 2), OPT, tmp_path / "src", with_arch=False)
    with pytest.raises(reshard.ArchitectureError, match=r"no architecture in .*; pass --arch NAME, one of opt-125m"):
        reshard.inspect(tmp_path / "src")
    with pytest.raises(reshard.MismatchError):
        reshard.inspect(tmp_path / "src", arch="opt-125m")
    proc = _cli("inspect", str(tmp_path / "src"))
    assert proc.returncode == 3 and "pass --arch NAME" in proc.stderr


def test_usage_errors(tmp_path: Path, metaseq_tp: Path) -> None:
    with pytest.raises(reshard.UsageError, match="does not divide"):
        reshard.convert(metaseq_tp, tmp_path / "out", to="native", tp=3)
    (tmp_path / "exists").mkdir()
    with pytest.raises(reshard.UsageError, match="already exists"):
        reshard.convert(metaseq_tp, tmp_path / "exists", to="native")
    assert _cli("convert", str(metaseq_tp), str(tmp_path / "o"), "--to", "native", "--tp", "3").returncode == 2
    assert _cli("convert", str(metaseq_tp)).returncode == 2
    assert _nothing_left(tmp_path, "out") and _nothing_left(tmp_path, "o")


def test_failure_mid_write_leaves_nothing(tmp_path: Path, metaseq_fsdp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reshard.sources import MetaseqSource

    calls = {"n": 0}
    original = MetaseqSource._read

    def flaky(self: MetaseqSource, name: str, scratch: object) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 10:
            raise OSError("disk went away")
        return original(self, name, scratch)

    monkeypatch.setattr(MetaseqSource, "_read", flaky)
    with pytest.raises(OSError, match="disk went away"):
        reshard.convert(metaseq_fsdp, tmp_path / "out", to="native")
    assert list(tmp_path.iterdir()) == []

"""Format detection and conversion-option checks: the one authority every caller asks.

Every checkpoint here is written by a real writer (reshard's, transformers' save_pretrained, or
the metaseq fixtures), never by hand-made marker files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import reshard
from reshard.formats import native_file_name
from reshard.testing import random_state
from tests.reshard.cases import LLAMA, OPT


@pytest.fixture(scope="module")
def native_tp2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("native") / "opt-tp2"
    reshard.save_state(random_state(OPT, seed=3), OPT, folder, to="native", tp=2, dtype="fp16")
    return folder


def _listing(folder: Path) -> tuple[list[str], dict[str, str]]:
    """A storage-style listing (relative paths) and the text of its small files."""
    names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    texts = {n: (folder / n).read_text() for n in names if n.endswith(".json")}
    return names, texts


def test_native_tp2_written_by_reshard_is_native_tp2(native_tp2: Path) -> None:
    detected = reshard.detect(native_tp2)
    assert (detected.format, detected.family, detected.tp_size, detected.dtype) == ("native", "opt", 2, "float16")
    assert detected.files == (native_file_name(0, 2), native_file_name(1, 2))
    # The same answer from a listing and a small-file reader, as object storage gives them.
    names, texts = _listing(native_tp2)
    assert reshard.detect_files(names, texts.__getitem__) == detected


def test_transformers_checkpoints(hf_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    for family, folder in hf_checkpoints.items():
        detected = reshard.detect(folder)
        assert (detected.format, detected.family, detected.tp_size, detected.dtype) == ("hf", family, 1, "float32")
        assert detected.files == ("model.safetensors",)
    sharded = tmp_path / "sharded"
    reshard.convert(hf_checkpoints["llama"], sharded, to="hf", dtype="bf16", max_shard_bytes=20_000)
    detected = reshard.detect(sharded)
    assert (detected.format, detected.dtype) == ("hf", "bfloat16")
    assert "model.safetensors.index.json" in detected.files and len(detected.files) > 2


def test_transformers_4_config_names_dtype_torch_dtype(hf_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    names, texts = _listing(hf_checkpoints["opt"])
    config = json.loads(texts["config.json"])
    config["torch_dtype"] = "bfloat16"
    config.pop("dtype", None)
    texts["config.json"] = json.dumps(config)
    assert reshard.detect_files(names, texts.__getitem__).dtype == "bfloat16"


def test_metaseq_parts_and_fsdp_shards(metaseq_tp: Path, metaseq_fsdp: Path) -> None:
    detected = reshard.detect(metaseq_tp)
    assert (detected.format, detected.family, detected.tp_size, detected.dtype) == ("metaseq", "opt", 2, "")
    detected = reshard.detect(metaseq_fsdp)
    assert (detected.format, detected.tp_size, len(detected.files)) == ("metaseq-fsdp", 2, 6)
    assert reshard.inspect(metaseq_fsdp).format == detected.format


def test_empty_unknown_and_ambiguous_directories_say_what_was_found(
    tmp_path: Path, metaseq_tp: Path, hf_checkpoints: dict[str, Path], native_tp2: Path
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(reshard.FormatError, match="holds no files"):
        reshard.detect(tmp_path / "empty")
    with pytest.raises(reshard.FormatError, match="no such file"):
        reshard.detect(tmp_path / "nowhere")
    with pytest.raises(reshard.FormatError, match=r"found weights\.npz.*metaseq"):
        reshard.detect_files(["weights.npz"], lambda name: "")

    hf_names, hf_texts = _listing(hf_checkpoints["opt"])
    ms_names = [p.name for p in metaseq_tp.iterdir()]
    with pytest.raises(reshard.FormatError, match="both transformers files .* and metaseq files"):
        reshard.detect_files(hf_names + ms_names, hf_texts.__getitem__)
    renamed = [n.replace("reshard-", "other-") for n in ms_names]
    with pytest.raises(reshard.UsageError, match=r"several checkpoints \(other, reshard\)"):
        reshard.detect_files(ms_names + renamed, lambda name: "")
    with pytest.raises(reshard.FormatError, match=r"part 1 of checkpoint_last is missing shard file\(s\) \[1\]"):
        reshard.detect_files(
            ["checkpoint_last-model_part-0-shard0.pt", "checkpoint_last-model_part-0-shard1.pt"]
            + ["checkpoint_last-model_part-1-shard0.pt"],
            lambda name: "",
        )
    with pytest.raises(reshard.FormatError, match="model.safetensors.index.json"):
        reshard.detect_files(["config.json", "model-00001-of-00002.safetensors"], lambda name: "{}")

    names, texts = _listing(native_tp2)
    with pytest.raises(reshard.FormatError, match=r"tp_size=2 but model-rank-00001-of-00002\.safetensors is missing"):
        reshard.detect_files([n for n in names if n != native_file_name(1, 2)], texts.__getitem__)
    with pytest.raises(reshard.FormatError, match="config.json: not valid JSON"):
        reshard.detect_files(names, lambda name: "{")


def test_check_options_defaults_to_the_source() -> None:
    options = reshard.check_options(to="native", tp=None, dtype=None, source_tp=2, source_dtype="float16", config=OPT)
    assert (options.to, options.tp_size, options.dtype, options.dtype_name) == ("native", 2, torch.float16, "float16")
    options = reshard.check_options(to="hf", tp=None, dtype="bf16", source_tp=2, source_dtype="float16", config=OPT)
    assert (options.tp_size, options.dtype) == (1, torch.bfloat16)


@pytest.mark.parametrize(
    "request_, option, words",
    [
        ({"to": "onnx"}, "to", "native, hf, metaseq"),
        ({"tp": 3}, "tp", "tp 3: .*n_head=4.*divides 4"),
        ({"tp": 0}, "tp", "positive whole number"),
        ({"to": "hf", "tp": 2}, "tp", "set tp to 1"),
        ({"dtype": "int8"}, "dtype", "'int8': use one of fp16, bf16, fp32"),
        ({"source_dtype": ""}, "dtype", "choose one of fp16, bf16, fp32"),
        ({"to": "metaseq", "config": LLAMA}, "to", "OPT models only"),
        ({"to": "metaseq", "config": None, "family": "llama"}, "to", "OPT models only"),
    ],
)
def test_check_options_names_the_value_to_change(request_: dict[str, object], option: str, words: str) -> None:
    arguments: dict[str, object] = {
        "to": "native",
        "tp": None,
        "dtype": None,
        "source_tp": 1,
        "source_dtype": "float32",
        "config": OPT,
    }
    with pytest.raises(reshard.OptionError, match=words) as caught:
        reshard.check_options(**{**arguments, **request_})
    assert caught.value.option == option and caught.value.exit_code == 2

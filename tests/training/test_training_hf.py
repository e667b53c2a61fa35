"""Parity with transformers at tp=1, saving to and loading from its format, and checkpoint errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from _workers import HF_CASES, hf_model, sample_batch
from safetensors import safe_open
from safetensors.torch import save_file

import training
from training import CheckpointError


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path / "model.safetensors"), "pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}


def _rewrite(src: Path, dst: Path, tensors: dict[str, torch.Tensor], config: dict | None = None) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "config.json", dst / "config.json")
    if config is not None:
        (dst / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("name", list(HF_CASES))
def test_logits_match_transformers(hf_checkpoints: dict[str, Path], name: str) -> None:
    batch = sample_batch()
    ref_model = hf_model(name)
    ours = training.load_pretrained(hf_checkpoints[name])
    with torch.no_grad():
        ref = ref_model(batch["ids"]).logits
        out = ours(batch["ids"])
        ref_masked = ref_model(batch["ids"], attention_mask=batch["mask"]).logits
        out_masked = ours(batch["ids"], attention_mask=batch["mask"])
    assert out.shape == ref.shape == (2, 12, 100)
    assert (out - ref).abs().max().item() <= 1e-5
    real = batch["mask"].bool()  # padded positions carry no meaning in either model
    assert (out_masked - ref_masked)[real].abs().max().item() <= 1e-5


def test_moe_aux_loss_matches_transformers(hf_checkpoints: dict[str, Path]) -> None:
    batch = sample_batch()
    with torch.no_grad():
        ref = hf_model("mixtral")(batch["ids"], output_router_logits=True)
        logits, aux = training.load_pretrained(hf_checkpoints["mixtral"])(batch["ids"], return_aux_loss=True)
    assert aux is not None and abs(aux.item() - ref.aux_loss.item()) <= 1e-5
    assert training.load_pretrained(hf_checkpoints["mixtral"]).config.router_aux_loss_coef == 0.001


def test_transformers_5_writes_per_expert_names(hf_checkpoints: dict[str, Path]) -> None:
    # Pinned fact (transformers 5.23): save_pretrained converts the in-memory stacked experts back
    # to the 4.x per-expert names. The loader accepts both; this test notices if that changes.
    keys = set(_tensors(hf_checkpoints["mixtral"]))
    assert "model.layers.0.block_sparse_moe.experts.0.w1.weight" in keys
    assert "model.layers.0.block_sparse_moe.gate.weight" in keys


def test_loads_stacked_expert_layout(hf_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    src = hf_checkpoints["mixtral"]
    tensors = _tensors(src)
    stacked: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if ".block_sparse_moe." not in key:
            stacked[key] = value
    for layer in range(2):
        moe = f"model.layers.{layer}.block_sparse_moe"
        experts = range(4)
        stacked[f"model.layers.{layer}.mlp.gate.weight"] = tensors[f"{moe}.gate.weight"]
        stacked[f"model.layers.{layer}.mlp.experts.gate_up_proj"] = torch.stack(
            [
                torch.cat([tensors[f"{moe}.experts.{e}.w1.weight"], tensors[f"{moe}.experts.{e}.w3.weight"]])
                for e in experts
            ]
        )
        stacked[f"model.layers.{layer}.mlp.experts.down_proj"] = torch.stack(
            [tensors[f"{moe}.experts.{e}.w2.weight"] for e in experts]
        )
    batch = sample_batch()
    with torch.no_grad():
        a = training.load_pretrained(src)(batch["ids"])
        b = training.load_pretrained(_rewrite(src, tmp_path / "stacked", stacked))(batch["ids"])
    assert torch.equal(a, b)


def test_loads_sharded_checkpoint_with_index(hf_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    ref = hf_model("llama")
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    batch = sample_batch()
    with torch.no_grad():
        out = training.load_pretrained(tmp_path)(batch["ids"])
        assert (out - ref(batch["ids"]).logits).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", list(HF_CASES))
def test_save_pretrained_loads_in_transformers(hf_checkpoints: dict[str, Path], tmp_path: Path, name: str) -> None:
    ours = training.load_pretrained(hf_checkpoints[name])
    training.save_pretrained(ours, tmp_path)
    assert set(_tensors(tmp_path)) == set(_tensors(hf_checkpoints[name]))
    import transformers

    cls = getattr(transformers, f"{HF_CASES[name]['cls']}ForCausalLM")
    reloaded = cls.from_pretrained(tmp_path, attn_implementation="eager").eval()
    batch = sample_batch()
    with torch.no_grad():
        assert (reloaded(batch["ids"]).logits - ours(batch["ids"])).abs().max().item() <= 1e-5
    # And back through our loader: bit-identical weights.
    again = training.load_pretrained(tmp_path)
    for (n, a), (_, b) in zip(ours.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), n


def test_load_with_dtype(hf_checkpoints: dict[str, Path]) -> None:
    model = training.load_pretrained(hf_checkpoints["llama"], dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model(sample_batch()["ids"]).dtype == torch.bfloat16


def test_missing_tensor_is_named(hf_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    tensors = _tensors(hf_checkpoints["llama"])
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    path = _rewrite(hf_checkpoints["llama"], tmp_path / "missing", tensors)
    with pytest.raises(CheckpointError, match=r"missing.*model\.layers\.1\.self_attn\.k_proj\.weight"):
        training.load_pretrained(path)


def test_wrong_shape_is_named(hf_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    tensors = _tensors(hf_checkpoints["opt"])
    tensors["model.decoder.layers.0.fc1.weight"] = torch.zeros(60, 32)
    path = _rewrite(hf_checkpoints["opt"], tmp_path / "shape", tensors)
    with pytest.raises(CheckpointError, match=r"model\.decoder\.layers\.0\.fc1\.weight.*\(60, 32\).*\(64, 32\)"):
        training.load_pretrained(path)


def test_unknown_key_is_named(hf_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    tensors = _tensors(hf_checkpoints["mixtral"])
    tensors["model.layers.0.block_sparse_moe.experts.4.w1.weight"] = torch.zeros(48, 32)  # a 5th expert
    path = _rewrite(hf_checkpoints["mixtral"], tmp_path / "unknown", tensors)
    with pytest.raises(CheckpointError, match=r"unknown.*experts\.4\.w1\.weight"):
        training.load_pretrained(path)


def test_bad_config_json_names_the_field(hf_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    config = json.loads((hf_checkpoints["llama"] / "config.json").read_text())
    config["hidden_act"] = "gelu"
    path = _rewrite(hf_checkpoints["llama"], tmp_path / "cfg", _tensors(hf_checkpoints["llama"]), config)
    with pytest.raises(ValueError, match="hidden_act"):
        training.load_pretrained(path)


def test_tp_that_does_not_divide_fails_before_reading(hf_checkpoints: dict[str, Path]) -> None:
    config = training.ModelConfig.from_hf(json.loads((hf_checkpoints["llama"] / "config.json").read_text()))
    with pytest.raises(ValueError, match="n_head=4"):
        config.check_tp(3)


def test_loads_checkpoint_without_model_prefix(hf_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    # Some OPT exports name tensors "decoder.layers.0..." (no "model.") and store the tied head.
    tensors = {k.removeprefix("model."): v for k, v in _tensors(hf_checkpoints["opt"]).items()}
    tensors["lm_head.weight"] = tensors["decoder.embed_tokens.weight"].clone()
    path = _rewrite(hf_checkpoints["opt"], tmp_path / "noprefix", tensors)
    batch = sample_batch()
    with torch.no_grad():
        a = training.load_pretrained(hf_checkpoints["opt"])(batch["ids"])
        b = training.load_pretrained(path)(batch["ids"])
    assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", list(HF_CASES))
def test_bf16_on_gpu_is_close_to_transformers(hf_checkpoints: dict[str, Path], name: str) -> None:
    batch = sample_batch()
    ids = batch["ids"].cuda()
    ours = training.load_pretrained(hf_checkpoints[name], dtype=torch.bfloat16, device="cuda")
    ref = hf_model(name).to("cuda", torch.bfloat16)
    with torch.no_grad():
        gap = (ours(ids).float() - ref(ids).logits.float()).abs().max().item()
    assert gap <= 0.1

"""Tensor parallelism: two gloo ranks spawned from pytest agree with one process and with transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _dist import run_distributed
from _workers import GLAM_TINY, forward_backward, hf_model, sample_batch, tp_worker

import training

pytestmark = pytest.mark.slow

CASES = ("opt", "opt350", "llama", "mixtral")


@pytest.fixture(scope="module")
def tp2(hf_checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    save_dir = tmp_path_factory.mktemp("tp2_saved")
    ranks = run_distributed(tp_worker, 2, {n: str(hf_checkpoints[n]) for n in CASES}, str(save_dir))
    return {"rank0": ranks[0], "rank1": ranks[1], "saved": save_dir}


@pytest.fixture(scope="module")
def tp1(hf_checkpoints: dict[str, Path]) -> dict[str, Any]:
    torch.set_num_threads(1)
    batch = sample_batch()
    results = {name: forward_backward(training.load_pretrained(hf_checkpoints[name]), batch) for name in CASES}
    results["glam"] = forward_backward(training.build_model(GLAM_TINY, seed=3), batch)
    return results


@pytest.mark.parametrize("name", CASES)
def test_tp2_logits_match_transformers(tp2: dict[str, Any], name: str) -> None:
    batch = sample_batch()
    with torch.no_grad():
        ref = hf_model(name)(batch["ids"]).logits
    for rank in ("rank0", "rank1"):  # full-vocabulary logits on every rank
        ours = tp2[rank][name]["logits"]
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", (*CASES, "glam"))
def test_tp2_gradients_match_tp1(tp1: dict[str, Any], tp2: dict[str, Any], name: str) -> None:
    one, two = tp1[name], tp2["rank0"][name]
    assert tp2["rank0"]["world_size"] == 2
    assert abs(one["loss"] - two["loss"]) <= 1e-5
    assert (one["logits"] - two["logits"]).abs().max().item() <= 1e-4
    real = sample_batch()["mask"].bool()
    assert (one["masked"] - two["masked"])[real].abs().max().item() <= 1e-4
    assert one["grads"].keys() == two["grads"].keys()
    for param, grad in one["grads"].items():
        scale = max(grad.abs().max().item(), 1e-3)
        gap = (grad - two["grads"][param]).abs().max().item()
        assert gap <= 1e-4 * scale + 1e-6, f"{name}: gradient of {param} differs by {gap}"
    # Replicated parameters (norms, row-parallel biases, router) must get the same gradient on each rank.
    assert two["replicated_gap"] <= 1e-6


def test_tp2_moe_router_gets_gradient(tp2: dict[str, Any]) -> None:
    grads = tp2["rank0"]["mixtral"]["grads"]
    assert grads["layers.0.mlp.router.weight"].abs().max().item() > 0


@pytest.mark.parametrize("name", ("opt", "llama", "mixtral"))
def test_tp2_incremental_decoding_matches_full_forward(tp2: dict[str, Any], name: str) -> None:
    real = sample_batch()["mask"].bool()
    decode = tp2["rank1"][name]["decode"]
    assert (decode["full"] - decode["incremental"])[real].abs().max().item() <= 1e-5


def test_tp2_save_loads_in_transformers(tp2: dict[str, Any]) -> None:
    from transformers import MixtralForCausalLM

    model = MixtralForCausalLM.from_pretrained(tp2["saved"], attn_implementation="eager").eval()
    batch = sample_batch()
    with torch.no_grad():
        ref = model(batch["ids"]).logits
    assert (ref - tp2["rank0"]["mixtral"]["logits"]).abs().max().item() <= 1e-4

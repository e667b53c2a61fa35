"""The training loss: vocab-parallel cross-entropy, and one step's loss and gradients against
transformers' own loss (labels, MoE aux loss included) on the same weights and batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _dist import run_distributed
from _train_helpers import our_step, sequences, tp_loss_worker
from _workers import GLAM_TINY, VOCAB, hf_model

import training
from training.hf import hf_name_map
from training.loss import IGNORE_INDEX, TrainModule, vocab_parallel_cross_entropy
from training.parallel import TPGroup

CASES = ("opt", "llama", "mixtral")


def hf_step(name: str) -> dict[str, Any]:
    """transformers' loss for the same batch: labels are the next tokens (``shift_labels``), so
    both sides count the same L predictions; Mixtral adds coef x its load-balancing loss."""
    seq = sequences()
    model = hf_model(name)  # eval mode: no dropout
    extra = {"output_router_logits": True} if name == "mixtral" else {}
    out = model(input_ids=seq[:, :-1], labels=seq[:, 1:], shift_labels=seq[:, 1:].contiguous(), **extra)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": out.loss.item(), "grads": grads}


def assert_grads_match(
    ours: training.Transformer, grads: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]
) -> None:
    name_map = hf_name_map(ours.config, expert_layout="stacked")  # transformers 5 in-memory names
    compared = 0
    for param_name, grad in grads.items():
        for hf_name, piece in name_map[param_name].split(grad).items():
            scale = max(ref[hf_name].abs().max().item(), 1e-3)
            gap = (piece - ref[hf_name]).abs().max().item()
            assert gap <= 1e-4 * scale + 1e-6, f"gradient of {param_name} ({hf_name}) differs by {gap}"
            compared += 1
    tied_head = {"lm_head.weight"} if ours.config.tied else set()
    assert compared == len(ref.keys() - tied_head)


@pytest.mark.parametrize("name", CASES)
def test_one_step_matches_transformers_tp1(hf_checkpoints: dict[str, Path], name: str) -> None:
    ref = hf_step(name)
    model = training.load_pretrained(hf_checkpoints[name]).train()
    ours = our_step(model, sequences())
    assert abs(ours["loss"] - ref["loss"]) <= 1e-5
    assert_grads_match(model, ours["grads"], ref["grads"])


@pytest.mark.slow
def test_one_step_matches_transformers_tp2(hf_checkpoints: dict[str, Path]) -> None:
    ranks = run_distributed(tp_loss_worker, 2, {n: str(hf_checkpoints[n]) for n in CASES})
    for name in CASES:
        ref = hf_step(name)
        model = training.load_pretrained(hf_checkpoints[name])  # only for its config / name map
        for rank in ranks:
            assert abs(rank[name]["loss"] - ref["loss"]) <= 1e-5, name
        assert ranks[0][name]["replicated_gap"] <= 1e-6
        assert_grads_match(model, ranks[0][name]["grads"], ref["grads"])


def test_activation_checkpointing_gives_the_same_step(hf_checkpoints: dict[str, Path]) -> None:
    model = training.load_pretrained(hf_checkpoints["mixtral"]).train()
    plain = our_step(model, sequences())
    recomputed = our_step(model, sequences(), checkpointing=True)
    assert recomputed["loss"] == plain["loss"]
    for name, grad in plain["grads"].items():
        assert torch.allclose(recomputed["grads"][name], grad, rtol=1e-6, atol=1e-7), name


def test_vocab_parallel_cross_entropy_ignores_padding_rows_and_ignored_targets() -> None:
    """One rank holding the whole padded vocabulary: padding columns must not enter the softmax,
    ignored targets contribute neither loss nor gradient."""
    gen = torch.Generator().manual_seed(0)
    padded = 104
    logits = torch.randn(2, 5, padded, generator=gen, requires_grad=True)
    targets = torch.randint(0, VOCAB, (2, 5), generator=gen)
    targets[0, 1] = IGNORE_INDEX
    ours = vocab_parallel_cross_entropy(
        logits, targets, vocab_start=0, vocab_size=VOCAB, tp=TPGroup(group=None, rank=0, world_size=1)
    )
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = F.cross_entropy(ref_logits[..., :VOCAB].transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    assert torch.allclose(ours, ref, atol=1e-6)
    assert ours[0, 1].item() == 0.0
    ours.sum().backward()
    ref.sum().backward()
    assert torch.allclose(logits.grad, ref_logits.grad, atol=1e-6)
    assert logits.grad[..., VOCAB:].abs().max().item() == 0.0
    assert logits.grad[0, 1].abs().max().item() == 0.0


@pytest.mark.parametrize("name", ("opt350", "glam"))
def test_training_trunk_agrees_with_the_model_forward(hf_checkpoints: dict[str, Path], name: str) -> None:
    """The loss path runs the decoder trunk itself (to stop before the head); it must stay the
    same function as ``Transformer.forward`` for every family and variant (post-norm with
    project_in/out; MoE every other layer)."""
    model = (
        training.build_model(GLAM_TINY, seed=3) if name == "glam" else training.load_pretrained(hf_checkpoints[name])
    )
    seq = sequences()
    with torch.no_grad():
        logits, aux = model(seq[:, :-1], return_aux_loss=True)
        ce_sum, our_aux = TrainModule(model)(seq[:, :-1], seq[:, 1:])
    ref = F.cross_entropy(logits.reshape(-1, VOCAB), seq[:, 1:].reshape(-1), reduction="sum")
    assert abs(ce_sum.item() - ref.item()) <= 1e-4
    assert (aux is None) == (our_aux is None)
    if aux is not None:
        assert abs(aux.item() - our_aux.item()) <= 1e-6

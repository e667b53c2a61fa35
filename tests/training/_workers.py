"""Tiny checkpoints and the code that runs inside spawned tensor-parallel workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

import training
from tests.hf_tiny import random_hf_model
from training import Replicated, Transformer, merge_shards, sharding_plan

VOCAB = 100  # not a multiple of 8, so vocabulary padding is exercised (padded to 104)

HF_CASES: dict[str, dict[str, Any]] = {
    "opt": {
        "cls": "OPT",
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "ffn_dim": 64,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
    },
    # OPT-350M shape: post-norm, 16-wide embeddings with project_in/out.
    "opt350": {
        "cls": "OPT",
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "ffn_dim": 64,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "word_embed_proj_dim": 16,
        "do_layer_norm_before": False,
    },
    # Grouped-query attention: 4 query heads share 2 KV heads.
    "llama": {
        "cls": "Llama",
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "intermediate_size": 48,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
    },
    "mixtral": {
        "cls": "Mixtral",
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "intermediate_size": 48,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "num_local_experts": 4,
    },
}

# A GLaM-pattern model (MoE every other layer) has no transformers counterpart; tp tests build it.
GLAM_TINY = training.ModelConfig(
    family="mixtral",
    name="glam-tiny",
    vocab_size=VOCAB,
    n_layer=4,
    n_head=4,
    n_embd=32,
    ffn_dim=48,
    max_seq_len=64,
    n_expert=4,
    moe_every=2,
)


def hf_model(name: str) -> Any:
    return random_hf_model(HF_CASES[name], seed=sum(map(ord, name)))


def make_hf_checkpoint(name: str, path: Path) -> Path:
    hf_model(name).save_pretrained(path)
    return path


def sample_batch(seed: int = 0, batch: int = 2, length: int = 12) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, length), generator=gen)
    targets = torch.randint(0, VOCAB, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, :4] = 0  # left padding in the second row
    return {"ids": ids, "targets": targets, "mask": mask}


def loss_of(model: Transformer, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits, aux = model(batch["ids"], return_aux_loss=True)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["targets"].reshape(-1))
    if aux is not None:
        loss = loss + model.config.router_aux_loss_coef * aux
    return loss


def full_grads(model: Transformer) -> tuple[dict[str, torch.Tensor], float]:
    """Gradients merged to full tensors by the sharding plan; also the largest disagreement of a
    replicated parameter's gradient between ranks (should be ~0)."""
    plan = sharding_plan(model)
    tp = model.tp
    grads: dict[str, torch.Tensor] = {}
    replicated_gap = 0.0
    for name, param in model.named_parameters():
        grad = param.grad.detach().contiguous()
        parts = [grad]
        if tp.world_size > 1:
            parts = [torch.empty_like(grad) for _ in range(tp.world_size)]
            dist.all_gather(parts, grad, group=tp.group)
        if isinstance(plan[name], Replicated):
            replicated_gap = max(replicated_gap, max((p - parts[0]).abs().max().item() for p in parts))
        grads[name] = merge_shards(parts, plan[name])
    return grads, replicated_gap


def forward_backward(model: Transformer, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    with torch.no_grad():
        logits = model(batch["ids"])
        masked = model(batch["ids"], attention_mask=batch["mask"])
    model.zero_grad(set_to_none=True)
    loss = loss_of(model, batch)
    loss.backward()
    grads, gap = full_grads(model)
    return {"logits": logits, "masked": masked, "loss": loss.item(), "grads": grads, "replicated_gap": gap}


def decode_matches_full(model: Transformer, batch: dict[str, torch.Tensor], prefill: int) -> dict[str, torch.Tensor]:
    """Logits of a left-padded batch from one full forward and from prefill + one-token decode steps."""
    ids, mask = batch["ids"], batch["mask"]
    with torch.no_grad():
        full = model(ids, attention_mask=mask)
        cache = model.allocate_kv_cache(batch_size=ids.shape[0] + 1, max_seq_len=ids.shape[1] + 4)
        steps = [model(ids[:, :prefill], attention_mask=mask[:, :prefill], kv_cache=cache)]
        for t in range(prefill, ids.shape[1]):
            steps.append(model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], kv_cache=cache))
    return {"full": full, "incremental": torch.cat(steps, dim=1)}


def tp_worker(checkpoints: dict[str, str], save_dir: str) -> dict[str, Any]:
    """Everything the tp=2 tests check, in one spawn (process start-up dominates on CPU)."""
    batch = sample_batch()
    results: dict[str, Any] = {}
    for name, path in checkpoints.items():
        model = training.load_pretrained(path)  # group=None: the whole (2-rank) world
        results[name] = forward_backward(model, batch)
        if name in ("llama", "mixtral", "opt"):
            results[name]["decode"] = decode_matches_full(model, batch, prefill=7)
        if name == "mixtral":
            training.save_pretrained(model, save_dir)
    glam = training.build_model(GLAM_TINY, seed=3)
    results["glam"] = forward_backward(glam, batch)
    results["world_size"] = dist.get_world_size()
    return results

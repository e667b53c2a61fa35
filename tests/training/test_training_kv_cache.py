"""KV cache: prefill then one-token decode gives the full forward's logits, padded batches included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _workers import GLAM_TINY, HF_CASES, decode_matches_full, hf_model, sample_batch

import training


@pytest.mark.parametrize("name", list(HF_CASES))
@pytest.mark.parametrize("prefill", [1, 6])
def test_prefill_then_decode_equals_full_forward(hf_checkpoints: dict[str, Path], name: str, prefill: int) -> None:
    model = training.load_pretrained(hf_checkpoints[name])
    batch = sample_batch()
    out = decode_matches_full(model, batch, prefill=prefill)
    real = batch["mask"].bool()  # row 1 is left-padded
    assert (out["full"] - out["incremental"])[real].abs().max().item() <= 1e-5


def test_decode_without_padding_mask_and_glam_pattern() -> None:
    model = training.build_model(GLAM_TINY, seed=1)
    ids = sample_batch()["ids"]
    cache = model.allocate_kv_cache(batch_size=2, max_seq_len=16)
    assert cache.keys[0].shape == (2, 4, 16, 8)  # (B_max, n_kv_head/tp, T_max, head_dim)
    with torch.no_grad():
        full = model(ids)
        steps = [model(ids[:, :5], kv_cache=cache)] + [model(ids[:, t : t + 1], kv_cache=cache) for t in range(5, 12)]
    assert cache.seq_len == 12
    assert (full - torch.cat(steps, dim=1)).abs().max().item() <= 1e-5


def test_left_padded_row_equals_the_unpadded_sequence(hf_checkpoints: dict[str, Path]) -> None:
    # Positions count real tokens only, so a left-padded row gives the same logits as the same
    # tokens alone, and greedy decoding from it matches transformers' generate.
    model = training.load_pretrained(hf_checkpoints["opt"])
    batch = sample_batch()
    with torch.no_grad():
        padded = model(batch["ids"], attention_mask=batch["mask"])[1, 4:]
        alone = model(batch["ids"][1:, 4:])[0]
        assert (padded - alone).abs().max().item() <= 1e-5

        ids, mask = batch["ids"], batch["mask"]
        ref = hf_model("opt").generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=1)
        cache = model.allocate_kv_cache(batch_size=2, max_seq_len=16)
        logits = model(ids, attention_mask=mask, kv_cache=cache)
        generated = [ids]
        for _ in range(4):
            nxt = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            generated.append(nxt)
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            logits = model(nxt, attention_mask=mask, kv_cache=cache)
    assert torch.equal(torch.cat(generated, dim=1), ref)


def test_explicit_positions_and_cache_overflow(hf_checkpoints: dict[str, Path]) -> None:
    model = training.load_pretrained(hf_checkpoints["llama"])
    ids = sample_batch()["ids"]
    with torch.no_grad():
        default = model(ids)
        explicit = model(ids, positions=torch.arange(12).expand(2, 12))
    assert torch.equal(default, explicit)
    cache = model.allocate_kv_cache(batch_size=2, max_seq_len=8)
    with pytest.raises(ValueError, match="allocate a larger cache"):
        model(ids, kv_cache=cache)

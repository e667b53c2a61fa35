"""The paged cache on its own: packed sequences in any order attend exactly as dense causal
attention over each sequence; block pool reference counting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from inference_worker.kv_cache import BlockPool, PagedKVCache, SeqChunk
from training.config import ModelConfig

CONFIG = ModelConfig(
    family="llama", name="t", vocab_size=16, n_layer=1, n_head=4, n_kv_head=2, n_embd=32, ffn_dim=8, max_seq_len=64
)
H, HKV, D = 4, 2, 8


def dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
    """q (H, T, D) at positions start.. over k, v (HKV, S, D): causal attention, GQA by repeat."""
    rep = H // HKV
    k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)
    S, T = k.shape[1], q.shape[1]
    allowed = torch.arange(S)[None, :] <= torch.arange(start, start + T)[:, None]
    return F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=allowed)[0]


def test_packed_chunks_in_any_order_equal_dense_attention() -> None:
    torch.manual_seed(0)
    cache = PagedKVCache(CONFIG, num_blocks=32, block_size=4)
    # (context before, new tokens, block table): a decode after a multi-token chunk, so decode
    # rows are not a prefix of the packed batch; blocks deliberately out of order.
    seqs = [(0, 5, [3, 9]), (4, 3, [7, 1]), (7, 1, [0, 2]), (2, 1, [5])]
    keys = [torch.randn(HKV, c + n, D) for c, n, _ in seqs]
    values = [torch.randn(HKV, c + n, D) for c, n, _ in seqs]
    queries = [torch.randn(H, n, D) for _, n, _ in seqs]
    # Earlier steps wrote each sequence's context.
    for (context, _, table), k, v in zip(seqs, keys, values, strict=True):
        if context:
            cache.begin_step([SeqChunk(context, 0, table)])
            q = torch.zeros(1, H, context, D)
            cache.attend(0, q, k[None, :, :context], v[None, :, :context])
    cache.begin_step([SeqChunk(n, c, table) for c, n, table in seqs])
    q = torch.cat(queries, dim=1)[None]
    k = torch.cat([k[:, c:] for (c, _, _), k in zip(seqs, keys, strict=True)], dim=1)[None]
    v = torch.cat([v[:, c:] for (c, _, _), v in zip(seqs, values, strict=True)], dim=1)[None]
    out = cache.attend(0, q, k, v)[0]
    row = 0
    for (context, new, _), qs, ks, vs in zip(seqs, queries, keys, values, strict=True):
        torch.testing.assert_close(out[:, row : row + new], dense(qs, ks, vs, context), atol=1e-5, rtol=1e-5)
        row += new


def test_block_pool_reference_counts() -> None:
    pool = BlockPool(3)
    a, b = pool.allocate(), pool.allocate()
    pool.share(a)
    pool.release(a)
    assert pool.num_free == 1 and pool.refs(a) == 1
    pool.release(a)
    pool.release(b)
    assert pool.num_free == 3
    with pytest.raises(RuntimeError):
        pool.release(a)


def test_a_request_larger_than_the_pool_is_refused_not_preempted_forever(checkpoints: dict) -> None:
    from _engine_helpers import make_engine

    from inference_worker import SamplingParams

    engine = make_engine(checkpoints["opt"], num_blocks=4, block_size=4)  # 16 tokens in all
    with pytest.raises(ValueError, match="needs 18 tokens of KV cache, but the engine's pool holds 16"):
        engine.add("big", list(range(3, 13)), SamplingParams(max_tokens=8))
    engine.add("fits", list(range(3, 13)), SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    assert len([t for r in engine.run_until_done()["fits"] for s in r.samples for t in s.token_ids]) == 6

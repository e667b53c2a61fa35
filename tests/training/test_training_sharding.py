"""Sharding declarations: every parameter's split comes from its layer; round trips are bit-exact."""

from __future__ import annotations

import pytest
import torch

import training
from training import ModelConfig, Replicated, Shard, merge_shards, shard_tensor, sharding_plan

# Head and FFN sizes divisible by 4 so the same model splits 1 -> 2 -> 4 -> 1.
ROUND_TRIP_CONFIGS = [
    ModelConfig(
        family="opt", name="rt-opt", vocab_size=100, n_layer=2, n_head=8, n_embd=32, ffn_dim=64, max_seq_len=16
    ),
    ModelConfig(
        family="opt",
        name="rt-opt350",
        vocab_size=100,
        n_layer=2,
        n_head=8,
        n_embd=32,
        ffn_dim=64,
        max_seq_len=16,
        pre_norm=False,
        word_embed_proj_dim=16,
    ),
    ModelConfig(
        family="llama",
        name="rt-llama",
        vocab_size=100,
        n_layer=2,
        n_head=8,
        n_kv_head=4,
        n_embd=32,
        ffn_dim=48,
        max_seq_len=16,
    ),
    ModelConfig(
        family="mixtral",
        name="rt-glam",
        vocab_size=100,
        n_layer=2,
        n_head=8,
        n_kv_head=4,
        n_embd=32,
        ffn_dim=48,
        max_seq_len=16,
        n_expert=4,
        moe_every=2,
    ),
]


@pytest.mark.parametrize("config", ROUND_TRIP_CONFIGS, ids=lambda c: c.name)
def test_round_trip_1_2_4_1_is_bit_exact(config: ModelConfig) -> None:
    model = training.build_model(config)
    plan = sharding_plan(model)
    for name, full in model.state_dict().items():
        spec = plan[name]
        two = [shard_tensor(full, spec, r, 2) for r in range(2)]
        four = [shard_tensor(merge_shards(two, spec), spec, r, 4) for r in range(4)]
        back = merge_shards(four, spec)
        assert back.dtype == full.dtype and torch.equal(back, full), name
        if isinstance(spec, Shard):
            assert two[0].shape[spec.dim] * 2 == full.shape[spec.dim]


def test_layers_declare_their_splits() -> None:
    model = training.build_model(ROUND_TRIP_CONFIGS[2])
    plan = sharding_plan(model)
    assert set(plan) == {n for n, _ in model.named_parameters()}
    assert plan["embed.weight"] == Shard(0)
    assert plan["lm_head.weight"] == Shard(0)
    assert plan["layers.0.attn.qkv.weight"] == Shard(0, (32, 16, 16))  # q, k, v blocks
    assert plan["layers.0.attn.out.weight"] == Shard(1)
    assert plan["layers.0.mlp.gate_up.weight"] == Shard(0, (48, 48))
    assert plan["layers.0.mlp.down.weight"] == Shard(1)
    assert isinstance(plan["layers.0.attn_norm.weight"], Replicated)
    moe = sharding_plan(training.build_model(ROUND_TRIP_CONFIGS[3]))
    assert moe["layers.1.mlp.gate_up"] == Shard(1, (48, 48))  # (E, 2 ffn, H): ffn/tp of every expert
    assert moe["layers.1.mlp.down"] == Shard(2)
    assert isinstance(moe["layers.1.mlp.router.weight"], Replicated)
    opt = sharding_plan(training.build_model(ROUND_TRIP_CONFIGS[0]))
    assert opt["layers.0.attn.out.bias"] == Replicated()  # added once after the all-reduce
    assert opt["layers.0.attn.qkv.bias"] == Shard(0, (32, 32, 32))


def test_fused_blocks_are_split_block_by_block() -> None:
    # q has 4 rows, k and v 2 each; rank 1 of 2 must get q rows 2-3, k row 1 and v row 1.
    full = torch.arange(8).float().unsqueeze(1)  # (8, 1): q=0..3, k=4..5, v=6..7
    spec = Shard(0, (4, 2, 2))
    assert shard_tensor(full, spec, 1, 2).flatten().tolist() == [2, 3, 5, 7]
    assert shard_tensor(full, Shard(0), 1, 2).flatten().tolist() == [4, 5, 6, 7]


def test_shards_of_a_built_model_match_the_parameters_of_a_tp_rank() -> None:
    # build_model draws the full weights independently of tp; the tp-rank model holds exactly the
    # declared shard of them. Checked here without processes by faking the rank through TPGroup.
    config = ROUND_TRIP_CONFIGS[3]
    full = training.build_model(config, seed=5).state_dict()
    with torch.device("meta"):
        rank1 = training.Transformer(config, training.TPGroup(group=None, rank=1, world_size=2))
    plan = sharding_plan(rank1)
    for name, param in rank1.named_parameters():
        assert param.shape == shard_tensor(full[name], plan[name], 1, 2).shape, name


def test_bad_split_names_the_sizes() -> None:
    with pytest.raises(ValueError, match="cannot be split into 3"):
        shard_tensor(torch.zeros(8, 2), Shard(0), 0, 3)
    with pytest.raises(ValueError, match="do not add up"):
        shard_tensor(torch.zeros(8, 2), Shard(0, (4, 2)), 0, 2)

"""ModelConfig: the published table, derived sizes, divisibility checks and transformers config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import training
from training import CONFIGS, ModelConfig, get_config


def test_table_has_the_published_sizes() -> None:
    opt = get_config("opt-175b")
    assert (opt.n_layer, opt.n_head, opt.n_embd, opt.ffn_dim, opt.max_seq_len, opt.vocab_size) == (
        96,
        96,
        12288,
        4 * 12288,
        2048,
        50272,
    )
    assert get_config("opt-350m").word_embed_proj_dim == 512 and not get_config("opt-350m").pre_norm
    assert get_config("llama-65b").ffn_dim == 22016
    glam = get_config("glam-1.2t-64e")
    assert glam.n_expert == 64 and glam.moe_every == 2 and glam.n_moe_layers == glam.n_layer // 2
    assert {c.family for c in CONFIGS.values()} == {"opt", "llama", "mixtral"}
    # Published parameter counts (padded vocab, as built).
    assert round(get_config("opt-125m").num_parameters() / 1e6) == 125
    assert round(get_config("opt-350m").num_parameters() / 1e6) == 331
    assert round(get_config("llama-7b").num_parameters() / 1e9, 2) == 6.74
    mixtral = get_config("mixtral-8x7b")
    assert round(mixtral.num_parameters() / 1e9, 1) == 46.7
    assert round(mixtral.num_parameters(active=True) / 1e9, 1) == 12.9
    assert 1.1e12 < glam.num_parameters() < 1.25e12


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(KeyError, match="opt-125m"):
        get_config("opt-7b")


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(
            family="opt", name="t-opt", vocab_size=100, n_layer=2, n_head=4, n_embd=32, ffn_dim=64, max_seq_len=64
        ),
        ModelConfig(
            family="opt",
            name="t-opt350",
            vocab_size=100,
            n_layer=2,
            n_head=4,
            n_embd=32,
            ffn_dim=64,
            max_seq_len=64,
            pre_norm=False,
            word_embed_proj_dim=16,
        ),
        ModelConfig(
            family="llama",
            name="t-llama",
            vocab_size=100,
            n_layer=2,
            n_head=4,
            n_kv_head=2,
            n_embd=32,
            ffn_dim=48,
            max_seq_len=64,
        ),
        ModelConfig(
            family="mixtral",
            name="t-glam",
            vocab_size=100,
            n_layer=4,
            n_head=4,
            n_embd=32,
            ffn_dim=48,
            max_seq_len=64,
            n_expert=4,
            moe_every=2,
        ),
    ],
    ids=lambda c: c.name,
)
def test_num_parameters_counts_the_built_model(config: ModelConfig) -> None:
    model = training.build_model(config)
    assert config.num_parameters() == sum(p.numel() for p in model.parameters())


def test_moe_every_places_experts() -> None:
    base = dict(
        family="mixtral", name="m", vocab_size=64, n_layer=4, n_head=2, n_embd=16, ffn_dim=16, max_seq_len=8, n_expert=4
    )
    assert [ModelConfig(**base, moe_every=1).is_moe_layer(i) for i in range(4)] == [True] * 4
    assert [ModelConfig(**base, moe_every=2).is_moe_layer(i) for i in range(4)] == [False, True, False, True]


def test_vocab_padding_rule_is_recorded_not_inferred() -> None:
    config = ModelConfig(
        family="llama", name="v", vocab_size=100, n_layer=1, n_head=2, n_embd=16, ffn_dim=16, max_seq_len=8
    )
    assert config.padded_vocab_size == 104
    assert config.replace(pad_vocab_multiple=64).padded_vocab_size == 128
    assert config.to_hf()[training.config.HF_PAD_RULE_KEY] == 8
    assert ModelConfig.from_hf(config.replace(pad_vocab_multiple=64).to_hf()).padded_vocab_size == 128


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"n_head": 3, "n_kv_head": 1}, "n_head=3"),
        ({"n_kv_head": 1}, "n_kv_head=1"),
        ({"ffn_dim": 49}, "ffn_dim=49"),
        ({"vocab_size": 101, "pad_vocab_multiple": 1}, "padded vocabulary"),
    ],
)
def test_tp_divisibility_names_the_number_to_change(changes: dict, field: str) -> None:
    config = ModelConfig(
        family="llama",
        name="d",
        vocab_size=100,
        n_layer=1,
        n_head=4,
        n_kv_head=2,
        n_embd=40,
        ffn_dim=48,
        max_seq_len=8,
        head_dim=8,
    )
    config.check_tp(2)
    bad = config.replace(**changes)
    with pytest.raises(ValueError, match=field):
        bad.check_tp(2)


def test_published_sizes_divide_their_training_tp() -> None:
    for name, tp in [("opt-125m", 2), ("opt-2.7b", 4), ("opt-66b", 8), ("opt-175b", 8), ("llama-65b", 8)]:
        get_config(name).check_tp(tp)
    with pytest.raises(ValueError, match="n_head=52"):
        get_config("llama-33b").check_tp(8)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"family": "gpt2"}, "family"),
        ({"n_layer": 0}, "n_layer"),
        ({"n_embd": 30}, "n_embd=30"),
        ({"n_kv_head": 3}, "n_kv_head=3"),
        ({"n_expert": 4}, "n_expert"),
        ({"family": "mixtral", "n_expert": 1}, "n_expert=1"),
    ],
)
def test_bad_config_names_the_field(changes: dict, field: str) -> None:
    base = dict(family="llama", name="b", vocab_size=64, n_layer=1, n_head=4, n_embd=32, ffn_dim=16, max_seq_len=8)
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{**base, **changes})


@pytest.mark.parametrize("name", ["opt", "opt350", "llama", "mixtral"])
def test_from_hf_to_hf_round_trip(hf_checkpoints: dict[str, Path], name: str) -> None:
    hf = json.loads((hf_checkpoints[name] / "config.json").read_text())
    config = ModelConfig.from_hf(hf)
    again = ModelConfig.from_hf(config.to_hf())
    assert again.replace(name=config.name) == config
    # Every field transformers reads for the architecture survives.
    exported = config.to_hf()
    for key in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
        "ffn_dim",
        "word_embed_proj_dim",
        "do_layer_norm_before",
        "intermediate_size",
        "num_key_value_heads",
        "num_local_experts",
        "num_experts_per_tok",
        "rms_norm_eps",
        "tie_word_embeddings",
    ):
        if key in hf:
            assert exported[key] == hf[key], key


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("activation_function", "gelu"),
        ("model_type", "gpt2"),
        ("num_hidden_layers", None),
    ],
)
def test_from_hf_rejects_unsupported_fields_by_name(hf_checkpoints: dict[str, Path], key: str, value: object) -> None:
    hf = json.loads((hf_checkpoints["opt"] / "config.json").read_text())
    hf[key] = value
    with pytest.raises(ValueError, match=key):
        ModelConfig.from_hf(hf)


def test_from_hf_rejects_sliding_window_and_rope_scaling(hf_checkpoints: dict[str, Path]) -> None:
    hf = json.loads((hf_checkpoints["mixtral"] / "config.json").read_text())
    with pytest.raises(ValueError, match="sliding_window"):
        ModelConfig.from_hf({**hf, "sliding_window": 4096})
    with pytest.raises(ValueError, match="rope"):
        ModelConfig.from_hf({**hf, "rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4}})


def test_glam_pattern_cannot_be_exported_to_mixtral() -> None:
    with pytest.raises(ValueError, match="moe_every=2"):
        get_config("glam-0.1b-64e").to_hf()


def test_model_builds_without_torch_distributed() -> None:
    assert not torch.distributed.is_initialized()
    model = training.build_model(
        ModelConfig(family="opt", name="s", vocab_size=64, n_layer=1, n_head=2, n_embd=16, ffn_dim=32, max_seq_len=16)
    )
    assert model.tp.world_size == 1
    assert model(torch.zeros(1, 3, dtype=torch.long)).shape == (1, 3, 64)

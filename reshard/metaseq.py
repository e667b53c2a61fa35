"""metaseq (OPT release) names and conventions, in one place.

Per FORMATS.md: tensor-parallel parts split like Megatron, which is what training's declarations
say for our model too, with one difference: each part's fused qkv stores its heads' blocks in
K, V, Q order where ours are Q, K, V. ``QKV_ORDER`` is that permutation, applied per part (never
to the whole tensor: concatenating whole part slices interleaves heads, the classic bug).
"""

from __future__ import annotations

import re
from typing import Any

from reshard.errors import ArchitectureError, FormatError
from training import CONFIGS, ModelConfig

# Each part's qkv holds our blocks (q=0, k=1, v=2) in the order k, v, q.
QKV_ORDER = (1, 2, 0)
# Known tensors we deliberately do not convert: the module version counter fairseq keeps as a
# buffer, and the output projection, which is the embedding (tied) and re-tied on load.
VERSION_BUFFER = "decoder.version"
TIED_OUTPUT = "decoder.output_projection.weight"
# fairscale wraps modules; metadata from some versions keeps the wrapper names in paths.
_WRAPPERS = re.compile(r"(^|\.)(_fsdp_wrapped_module|_fpw_module)(?=\.|$)")


def clean_name(name: str) -> str:
    return _WRAPPERS.sub("", name).lstrip(".")


def is_qkv(our_name: str) -> bool:
    return ".attn.qkv." in our_name


def name_map(cfg: ModelConfig) -> dict[str, str]:
    """Our parameter name -> metaseq parameter name (OPT only)."""
    if cfg.family != "opt":
        raise ArchitectureError(f"metaseq checkpoints hold OPT models only; {cfg.name} is family {cfg.family!r}")
    m = {"embed.weight": "decoder.embed_tokens.weight", "pos_embed.weight": "decoder.embed_positions.weight"}
    if cfg.word_embed_proj_dim is not None:
        m["project_in.weight"] = "decoder.project_in_dim.weight"
        m["project_out.weight"] = "decoder.project_out_dim.weight"
    if cfg.pre_norm:
        m["final_norm.weight"] = "decoder.layer_norm.weight"
        m["final_norm.bias"] = "decoder.layer_norm.bias"
    for i in range(cfg.n_layer):
        ours, theirs = f"layers.{i}", f"decoder.layers.{i}"
        for w in ("weight", "bias"):
            m[f"{ours}.attn.qkv.{w}"] = f"{theirs}.self_attn.qkv_proj.{w}"
            m[f"{ours}.attn.out.{w}"] = f"{theirs}.self_attn.out_proj.{w}"
            m[f"{ours}.attn_norm.{w}"] = f"{theirs}.self_attn_layer_norm.{w}"
            m[f"{ours}.mlp.fc1.{w}"] = f"{theirs}.fc1.{w}"
            m[f"{ours}.mlp.fc2.{w}"] = f"{theirs}.fc2.{w}"
            m[f"{ours}.mlp_norm.{w}"] = f"{theirs}.final_layer_norm.{w}"
    return m


def fsdp_module_of(metaseq_name: str) -> str:
    """FSDP wraps each decoder layer on its own; everything else lives in the root module."""
    match = re.match(r"^(decoder\.layers\.\d+)\.", metaseq_name)
    return match.group(1) if match else ""


def config_from_cfg(cfg: Any, *, vocab_rows: int, file: str) -> ModelConfig:
    """Our config from metaseq's ``cfg["model"]`` (or a fairseq ``args`` namespace, already a dict)."""
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model, dict) or "decoder_layers" not in model:
        raise ArchitectureError(f"no architecture in {file}; pass --arch NAME, one of {', '.join(CONFIGS)}")

    def need(key: str) -> Any:
        if model.get(key) is None:
            raise ArchitectureError(
                f"{file}: cfg['model'] has no {key!r}; pass --arch NAME, one of {', '.join(CONFIGS)}"
            )
        return model[key]

    for key, supported in (
        ("decoder_learned_pos", True),
        ("share_decoder_input_output_embed", True),
        ("activation_fn", "relu"),
        ("no_scale_embedding", True),
    ):
        if key in model and model[key] is not None and model[key] != supported:
            raise ArchitectureError(
                f"{file}: cfg['model'][{key!r}]={model[key]!r} is not supported (only {supported!r})"
            )
    embed_dim = int(need("decoder_embed_dim"))
    proj = model.get("decoder_input_dim")
    if vocab_rows % 8:
        raise ArchitectureError(
            f"{file}: embedding has {vocab_rows} rows, not a multiple of 8 (the OPT padding rule); "
            f"pass --arch NAME to state the vocabulary"
        )
    try:
        found = ModelConfig(
            family="opt",
            name="metaseq-opt",
            vocab_size=vocab_rows,
            n_layer=int(need("decoder_layers")),
            n_head=int(need("decoder_attention_heads")),
            n_embd=embed_dim,
            ffn_dim=int(need("decoder_ffn_embed_dim")),
            max_seq_len=int(need("max_target_positions")),
            pre_norm=bool(model.get("decoder_normalize_before", True)),
            word_embed_proj_dim=None if proj in (None, embed_dim) else int(proj),
            bos_token_id=2,
            eos_token_id=2,
            pad_token_id=1,
        )
    except ValueError as exc:
        raise FormatError(f"{file}: cfg['model'] does not describe a valid model: {exc}") from None
    # Name it after the published size it matches, if any (opt-1.3b), else by its shape.
    for known in CONFIGS.values():
        if known.replace(name=found.name) == found:
            return known
    return found.replace(name=f"metaseq-opt-{found.n_layer}L-{found.n_embd}d")


def cfg_from_config(cfg: ModelConfig, parts: int) -> dict[str, Any]:
    """The ``cfg`` dict metaseq writes, as far as the architecture goes."""
    return {
        "model": {
            "_name": "transformer_lm_megatron",
            "decoder_layers": cfg.n_layer,
            "decoder_embed_dim": cfg.n_embd,
            "decoder_attention_heads": cfg.n_head,
            "decoder_ffn_embed_dim": cfg.ffn_dim,
            "max_target_positions": cfg.max_seq_len,
            "decoder_learned_pos": True,
            "decoder_normalize_before": cfg.pre_norm,
            "share_decoder_input_output_embed": True,
            "decoder_input_dim": cfg.embed_dim,
            "decoder_output_dim": cfg.embed_dim,
            "activation_fn": "relu",
            "no_scale_embedding": True,
        },
        "common": {"model_parallel_size": parts},
    }

"""One config dataclass for the three decoder families, plus the table of published sizes.

Families:
  * ``opt``     LayerNorm, ReLU FFN, learned positions (offset 2), biases, tied head.
                ``pre_norm=False`` + ``word_embed_proj_dim`` gives the OPT-350M variant.
  * ``llama``   RMSNorm, SwiGLU, rotary (rotate-half), no biases, untied head, optional GQA.
  * ``mixtral`` LLaMA blocks whose FFN is replaced by ``n_expert`` SwiGLU experts with top-k
                routing (Mixtral semantics). ``moe_every=1`` puts MoE in every layer (Mixtral),
                ``moe_every=2`` in every other layer (GLaM); see ``is_moe_layer``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

Family = Literal["opt", "llama", "mixtral"]
FAMILIES: tuple[str, ...] = ("opt", "llama", "mixtral")

# Key under which our vocabulary padding rule travels inside a transformers config.json.
# transformers keeps unknown keys as attributes, so the rule survives a round trip through it.
HF_PAD_RULE_KEY = "openrelease_vocab_pad_multiple"


@dataclass(frozen=True)
class ModelConfig:
    family: Family
    name: str
    vocab_size: int  # real vocabulary (rows a tokenizer can emit); logits are returned over this
    n_layer: int
    n_head: int
    n_embd: int  # hidden size
    ffn_dim: int  # per-expert intermediate size for MoE layers
    max_seq_len: int
    n_kv_head: int | None = None  # None: multi-head attention (n_kv_head == n_head)
    head_dim: int | None = None  # None: n_embd // n_head
    # Vocabulary padding rule: embedding/head rows are padded to a multiple of this number.
    # Recorded here (and in config.json) and never inferred from a tensor's shape. Unlike
    # Megatron's 128 x tp rule, the padded size does not depend on the tensor-parallel degree,
    # so a checkpoint resharded to another tp keeps the same shapes.
    pad_vocab_multiple: int = 8
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    pre_norm: bool = True  # OPT-350M is post-norm
    word_embed_proj_dim: int | None = None  # OPT-350M: 512-wide embeddings with project_in/out
    tie_embeddings: bool | None = None  # None: family default (OPT tied, others untied)
    n_expert: int = 0
    top_k: int = 2
    moe_every: int = 1  # 1: every layer (Mixtral), 2: every other layer (GLaM)
    router_aux_loss_coef: float = 0.001
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"ModelConfig.family={self.family!r} is not one of {FAMILIES}")
        for field in (
            "vocab_size",
            "n_layer",
            "n_head",
            "n_embd",
            "ffn_dim",
            "max_seq_len",
            "pad_vocab_multiple",
            "moe_every",
            "top_k",
        ):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{field}={value!r} ({self.name}): must be a positive int")
        if self.n_kv_head is not None and (self.n_kv_head <= 0 or self.n_head % self.n_kv_head):
            raise ValueError(
                f"ModelConfig.n_kv_head={self.n_kv_head} ({self.name}) must divide n_head={self.n_head}: "
                f"pick a divisor of n_head for n_kv_head"
            )
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ValueError(
                f"ModelConfig.n_embd={self.n_embd} ({self.name}) is not divisible by n_head={self.n_head}: "
                f"change n_head or set head_dim explicitly"
            )
        if self.rotary and self.attn_head_dim % 2:
            raise ValueError(
                f"ModelConfig.head_dim={self.attn_head_dim} ({self.name}) must be even for rotary embeddings"
            )
        if self.family == "mixtral":
            if self.n_expert < self.top_k:
                raise ValueError(
                    f"ModelConfig.n_expert={self.n_expert} ({self.name}) must be >= top_k={self.top_k} "
                    f"for the mixtral family"
                )
        elif self.n_expert:
            raise ValueError(
                f"ModelConfig.n_expert={self.n_expert} ({self.name}): only the mixtral family has experts; set family='mixtral'"
            )
        if self.family != "opt" and (not self.pre_norm or self.word_embed_proj_dim is not None):
            raise ValueError(
                f"ModelConfig.pre_norm / word_embed_proj_dim ({self.name}): post-norm and project_in/out exist only for family='opt'"
            )

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_head if self.n_kv_head is not None else self.n_head

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.n_embd // self.n_head

    @property
    def embed_dim(self) -> int:
        """Width of the token embedding (and LM head input); differs from n_embd only for OPT-350M."""
        return self.word_embed_proj_dim if self.word_embed_proj_dim is not None else self.n_embd

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.pad_vocab_multiple) * self.pad_vocab_multiple

    @property
    def tied(self) -> bool:
        return self.tie_embeddings if self.tie_embeddings is not None else self.family == "opt"

    @property
    def rotary(self) -> bool:
        return self.family != "opt"

    @property
    def bias(self) -> bool:
        return self.family == "opt"

    def is_moe_layer(self, layer_idx: int) -> bool:
        """MoE layers are the last of every ``moe_every`` layers: every layer for 1, odd layers for 2
        (the first layer stays dense, as in GShard/GLaM)."""
        return self.n_expert > 0 and layer_idx % self.moe_every == self.moe_every - 1

    @property
    def n_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.n_layer))

    # ---- tensor-parallel checks ------------------------------------------------------------
    def check_tp(self, tp_size: int) -> None:
        """Fail up front, naming the number to change, when ``tp_size`` cannot split this model."""
        checks = [
            ("n_head", self.n_head),
            ("n_kv_head", self.kv_heads),
            ("padded vocabulary (vocab_size rounded up to pad_vocab_multiple)", self.padded_vocab_size),
            ("ffn_dim", self.ffn_dim),
        ]
        for field, value in checks:
            if value % tp_size:
                raise ValueError(
                    f"tensor-parallel size {tp_size} does not divide {field}={value} of {self.name}: "
                    f"use a tp size that divides {value}, or change {field.split(' ')[0]}"
                )

    # ---- parameter counts ------------------------------------------------------------------
    def num_parameters(self, *, active: bool = False) -> int:
        """Parameters of the model as built (padded vocabulary). ``active=True`` counts only the
        top_k experts a token uses in each MoE layer."""
        h, hd = self.n_embd, self.attn_head_dim
        emb = self.padded_vocab_size * self.embed_dim
        total = emb if self.tied else 2 * emb
        if self.word_embed_proj_dim is not None:
            total += 2 * self.n_embd * self.embed_dim
        if self.family == "opt":
            total += (self.max_seq_len + 2) * h
        q, kv = self.n_head * hd, self.kv_heads * hd
        attn = h * (q + 2 * kv) + q * h
        norm = h
        if self.bias:
            attn += q + 2 * kv + h
            norm = 2 * h
        if self.family == "opt":
            dense = 2 * h * self.ffn_dim + self.ffn_dim + h
        else:
            dense = 3 * h * self.ffn_dim
        experts = self.top_k if active else self.n_expert
        moe = experts * 3 * h * self.ffn_dim + self.n_expert * h
        for i in range(self.n_layer):
            total += attn + 2 * norm + (moe if self.is_moe_layer(i) else dense)
        if self.pre_norm:
            total += norm  # final norm
        return total

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # ---- transformers config.json ----------------------------------------------------------
    @classmethod
    def from_hf(cls, hf: dict[str, Any], *, name: str | None = None) -> ModelConfig:
        """Build from a transformers ``config.json`` dict (OPT, LLaMA or Mixtral)."""
        model_type = hf.get("model_type")
        name = name or hf.get("_name_or_path") or f"hf-{model_type}"
        common: dict[str, Any] = {
            "name": name,
            "vocab_size": _need(hf, "vocab_size"),
            "n_layer": _need(hf, "num_hidden_layers"),
            "n_head": _need(hf, "num_attention_heads"),
            "n_embd": _need(hf, "hidden_size"),
            "max_seq_len": _need(hf, "max_position_embeddings"),
            "pad_vocab_multiple": hf.get(HF_PAD_RULE_KEY, 8),
            "bos_token_id": _first(hf.get("bos_token_id")),
            "eos_token_id": _first(hf.get("eos_token_id")),
            "pad_token_id": hf.get("pad_token_id"),
        }
        if model_type == "opt":
            _expect(hf, "activation_function", "relu")
            _expect(hf, "enable_bias", True)
            _expect(hf, "layer_norm_elementwise_affine", True)
            _expect(hf, "_remove_final_layer_norm", False)
            proj = hf.get("word_embed_proj_dim")
            return cls(
                family="opt",
                ffn_dim=_need(hf, "ffn_dim"),
                pre_norm=bool(hf.get("do_layer_norm_before", True)),
                word_embed_proj_dim=None if proj in (None, common["n_embd"]) else proj,
                tie_embeddings=bool(hf.get("tie_word_embeddings", True)),
                **common,
            )
        if model_type in ("llama", "mixtral"):
            _expect(hf, "hidden_act", "silu")
            rope = hf.get("rope_parameters") or {}
            if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
                raise ValueError(
                    f"config.json field rope_parameters/rope_scaling={rope or hf.get('rope_scaling')!r}: "
                    f"only the default rotary embedding is supported"
                )
            theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0 if model_type == "llama" else 1e6))
            kw: dict[str, Any] = {
                "ffn_dim": _need(hf, "intermediate_size"),
                "n_kv_head": hf.get("num_key_value_heads") or None,
                "head_dim": hf.get("head_dim") or None,
                "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
                "rope_theta": float(theta),
                "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
            }
            if kw["head_dim"] == common["n_embd"] // common["n_head"]:
                kw["head_dim"] = None
            if model_type == "llama":
                _expect(hf, "attention_bias", False)
                _expect(hf, "mlp_bias", False)
                return cls(family="llama", **kw, **common)
            if hf.get("sliding_window") is not None:
                raise ValueError(
                    f"config.json field sliding_window={hf['sliding_window']}: sliding-window attention "
                    f"is not supported; set it to null"
                )
            return cls(
                family="mixtral",
                n_expert=_need(hf, "num_local_experts"),
                top_k=int(hf.get("num_experts_per_tok", 2)),
                moe_every=int(hf.get("moe_layer_freq", 1)),
                router_aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)),
                **kw,
                **common,
            )
        raise ValueError(
            f"config.json field model_type={model_type!r} is not supported; expected 'opt', 'llama' or 'mixtral'"
        )

    def to_hf(self, *, dtype: str = "float32") -> dict[str, Any]:
        """A transformers ``config.json`` dict; ``from_hf(to_hf())`` gives back this config."""
        common: dict[str, Any] = {
            "vocab_size": self.vocab_size,
            "hidden_size": self.n_embd,
            "num_hidden_layers": self.n_layer,
            "num_attention_heads": self.n_head,
            "max_position_embeddings": self.max_seq_len,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "tie_word_embeddings": self.tied,
            "dtype": dtype,
            HF_PAD_RULE_KEY: self.pad_vocab_multiple,
        }
        if self.family == "opt":
            return {
                "architectures": ["OPTForCausalLM"],
                "model_type": "opt",
                "ffn_dim": self.ffn_dim,
                "do_layer_norm_before": self.pre_norm,
                "word_embed_proj_dim": self.embed_dim,
                "activation_function": "relu",
                "enable_bias": True,
                "layer_norm_elementwise_affine": True,
                "_remove_final_layer_norm": False,
                "dropout": 0.1,
                "attention_dropout": 0.0,
                **common,
            }
        llama_like = {
            "intermediate_size": self.ffn_dim,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.attn_head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.norm_eps,
            "rope_parameters": {"rope_theta": self.rope_theta, "rope_type": "default"},
            "attention_dropout": 0.0,
            **common,
        }
        if self.family == "llama":
            return {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "attention_bias": False,
                "mlp_bias": False,
                **llama_like,
            }
        if self.moe_every != 1:
            raise ValueError(
                f"ModelConfig.moe_every={self.moe_every} ({self.name}) has no transformers equivalent "
                f"(MixtralForCausalLM puts experts in every layer); only moe_every=1 can be exported"
            )
        return {
            "architectures": ["MixtralForCausalLM"],
            "model_type": "mixtral",
            "num_local_experts": self.n_expert,
            "num_experts_per_tok": self.top_k,
            "router_aux_loss_coef": self.router_aux_loss_coef,
            "router_jitter_noise": 0.0,
            "sliding_window": None,
            "output_router_logits": False,
            **llama_like,
        }


def _need(hf: dict[str, Any], key: str) -> Any:
    if key not in hf or hf[key] is None:
        raise ValueError(f"config.json is missing field {key!r}, which this model type requires")
    return hf[key]


def _expect(hf: dict[str, Any], key: str, supported: Any) -> None:
    if key in hf and hf[key] != supported:
        raise ValueError(f"config.json field {key}={hf[key]!r} is not supported; only {supported!r} is")


def _first(value: Any) -> int | None:
    return value[0] if isinstance(value, list) else value


def _opt(name: str, n_layer: int, n_head: int, n_embd: int, **kw: Any) -> ModelConfig:
    return ModelConfig(
        family="opt",
        name=name,
        vocab_size=50272,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        ffn_dim=4 * n_embd,
        max_seq_len=2048,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=1,
        **kw,
    )


def _llama(name: str, n_layer: int, n_head: int, n_embd: int, ffn_dim: int) -> ModelConfig:
    return ModelConfig(
        family="llama",
        name=name,
        vocab_size=32000,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        ffn_dim=ffn_dim,
        max_seq_len=2048,
        norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
    )


# Published sizes (OPT paper table 1; LLaMA paper table 2; Mixtral 8x7B release; GLaM paper).
# GLaM's experts are two-matrix FFNs of width 4*d; our experts are SwiGLU (three matrices),
# so ffn_dim is 2/3 of GLaM's (rounded to 128) to keep the expert parameter count: glam-1.2t-64e
# has ~1.14T parameters in all (paper: 1.2T) and ~73B active per token (paper: 96.6B, which
# counts its wider two-matrix FFNs and a 256K-row embedding differently).
CONFIGS: dict[str, ModelConfig] = {
    c.name: c
    for c in [
        _opt("opt-125m", 12, 12, 768),
        _opt("opt-350m", 24, 16, 1024, pre_norm=False, word_embed_proj_dim=512),
        _opt("opt-1.3b", 24, 32, 2048),
        _opt("opt-2.7b", 32, 32, 2560),
        _opt("opt-6.7b", 32, 32, 4096),
        _opt("opt-13b", 40, 40, 5120),
        _opt("opt-30b", 48, 56, 7168),
        _opt("opt-66b", 64, 72, 9216),
        _opt("opt-175b", 96, 96, 12288),
        _llama("llama-7b", 32, 32, 4096, 11008),
        _llama("llama-13b", 40, 40, 5120, 13824),
        _llama("llama-33b", 60, 52, 6656, 17920),
        _llama("llama-65b", 80, 64, 8192, 22016),
        ModelConfig(
            family="mixtral",
            name="mixtral-8x7b",
            vocab_size=32000,
            n_layer=32,
            n_head=32,
            n_kv_head=8,
            n_embd=4096,
            ffn_dim=14336,
            max_seq_len=32768,
            norm_eps=1e-5,
            rope_theta=1e6,
            n_expert=8,
            moe_every=1,
            bos_token_id=1,
            eos_token_id=2,
        ),
        ModelConfig(
            family="mixtral",
            name="glam-0.1b-64e",
            vocab_size=32000,
            n_layer=12,
            n_head=12,
            n_embd=768,
            ffn_dim=2048,
            max_seq_len=1024,
            n_expert=64,
            moe_every=2,
        ),
        ModelConfig(
            family="mixtral",
            name="glam-1.2t-64e",
            vocab_size=256000,
            n_layer=64,
            n_head=128,
            n_embd=8192,
            ffn_dim=21888,
            max_seq_len=1024,
            n_expert=64,
            moe_every=2,
        ),
    ]
}


def get_config(name: str) -> ModelConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown model name {name!r}; known: {', '.join(CONFIGS)}") from None

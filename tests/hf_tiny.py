"""A tiny transformers model with random weights, built in-process (no network): the one builder
behind the training and inference engine tests' own tiny cases."""

from __future__ import annotations

from typing import Any

import torch


def random_hf_model(spec: dict[str, Any], *, seed: int) -> Any:
    """``spec`` is a transformers config's keywords plus ``cls``, the family's class prefix ("OPT",
    "Llama", "Mixtral"); the model is in eval mode with eager attention."""
    import transformers

    spec = dict(spec)
    kind = spec.pop("cls")
    config = getattr(transformers, f"{kind}Config")(**spec)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, f"{kind}ForCausalLM")(config).eval()
    with torch.no_grad():
        for param in model.parameters():  # move norms off 1/0 and make the weights less tiny
            param.add_(torch.randn_like(param) * 0.05)
    return model

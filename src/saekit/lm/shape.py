"""The LM's shape and compute, read from its configuration without loading its weights.

The architecture is instantiated on the `meta` device (no memory, no weights read), so layer
counts, widths and parameter counts are the model's own, whatever its family. The compute of a
forward pass is counted from the matrices it multiplies by (Kaplan et al. 2020): 2 FLOPs per
weight of every linear map (the unembedding included; an embedding lookup is free) and
2 · n_layers · context · d_model per token for the attention scores and their weighting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from saekit.base.errors import SaekitError


@dataclass(frozen=True)
class ModelShape:
    """What a plan needs to know about an LM before loading it."""

    name: str
    n_layers: int
    n_ctx: int
    d_model: int
    parameters: int  # every parameter, embeddings included
    matmul_weights: int  # weights of the linear maps a token's forward pass multiplies by

    def forward_flops_per_token(self, context: int | None = None) -> float:
        """FLOPs of one token's forward pass in contexts of `context` tokens (default: the
        model's longest)."""
        attended = self.n_ctx if context is None else context
        return 2.0 * self.matmul_weights + 2.0 * self.n_layers * attended * self.d_model

    @classmethod
    def read(cls, name: str) -> ModelShape:
        """The shape of a hub model or local HF directory (its config only is read)."""
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        try:
            config = AutoConfig.from_pretrained(name)
            with torch.device("meta"):
                skeleton = AutoModelForCausalLM.from_config(config)
        except (OSError, ValueError) as error:
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise SaekitError(f"cannot read model {name}: {first_line}") from None
        n_ctx = int(getattr(config, "n_positions", None) or config.max_position_embeddings)
        return cls(
            name=name,
            n_layers=int(config.num_hidden_layers),
            n_ctx=n_ctx,
            d_model=int(config.hidden_size),
            parameters=sum(p.numel() for p in skeleton.parameters()),
            matmul_weights=_matmul_weights(skeleton),
        )


def _matmul_weights(model: nn.Module) -> int:
    """Weights of the linear maps (`nn.Linear`, and GPT-2's `Conv1D`, which is one), the
    unembedding included even when it is tied to the input embedding."""
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            total += module.weight.numel()
    return total

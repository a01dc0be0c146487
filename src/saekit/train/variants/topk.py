"""TopK (+ AuxK): keep the k largest pre-activations of each token (docs/algorithms.md §2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from saekit.train.sae import Dictionary
from saekit.train.sparse import SparsePattern
from saekit.train.variants.base import Mode, Selection
from saekit.train.variants.options import AuxOptions, KOptions, SAEOptions
from saekit.train.variants.registry import register


@dataclass(frozen=True)
class TopKOptions(AuxOptions, KOptions, SAEOptions):
    HEADLINE: ClassVar[tuple[str, ...]] = ("k",)


@register
class TopK(Selection):
    """f = ReLU(TopK_k(z)); loss NMSE + α·AuxK."""

    name = "topk"
    options_type = TopKOptions
    saelens_architecture = "topk"

    def select(
        self, sae: Dictionary, z_BF: Tensor, gradients_BD: Tensor | None, mode: Mode
    ) -> tuple[SparsePattern, Tensor | None]:
        return sae.top_k(z_BF, self.options.k), None

    def saelens_cfg(self) -> dict[str, Any]:
        return {"k": self.options.k, "rescale_acts_by_decoder_norm": False}

"""SAE variants: one activation strategy per module, found by name in `VARIANTS`."""

from saekit.train.variants import (  # noqa: F401  (importing a variant registers it)
    batchtopk,
    feature_choice,
    gated,
    gsae,
    jumprelu,
    matryoshka,
    relu,
    topk,
)
from saekit.train.variants.base import Activation, Selection
from saekit.train.variants.options import SAEOptions
from saekit.train.variants.registry import (
    ALIASES,
    VARIANTS,
    all_names,
    canonical_name,
    described_names,
    register,
)

__all__ = [
    "ALIASES",
    "VARIANTS",
    "Activation",
    "SAEOptions",
    "Selection",
    "all_names",
    "canonical_name",
    "described_names",
    "register",
]

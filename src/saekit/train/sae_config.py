"""`SAEConfig`: what a saved SAE is (its `cfg.json`), shared by the SAE core and the export."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from saekit import __version__

SAE_FORMAT = "saekit.sae"
SAE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SAEConfig:
    """What a saved SAE is: everything needed to rebuild it and to know what it was trained on."""

    name: str
    variant: str
    hook: str
    d_in: int
    d_sae: int
    k: int | None  # active latents per token (TopK family; mean for BatchTopK / FC), else None
    options: dict[str, Any]  # every option, resolved (see docs/variants.md)
    calibration: dict[str, float]  # values set from data before training (g-SAE: beta)
    input_scale: float  # c of training (E‖c·x‖ = √d), already folded into the weights
    store: dict[str, Any]  # location, identity and rows of the store it was trained on
    training: dict[str, Any]  # tokens, steps, batch size, seed, epochs
    saekit_version: str = __version__
    format: str = SAE_FORMAT
    format_version: int = SAE_FORMAT_VERSION

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SAEConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

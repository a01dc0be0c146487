"""Variant options: the keys of `--sae variant:key=value,...`, with defaults and validation.

Each variant's options are a frozen dataclass composed of the groups below. Types are read from
the annotations by the spec parser (`saekit.train.spec`), so a new key is one annotated field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from saekit.train import losses

DEFAULT_EXPANSION = 16  # latents = 16 · d unless given
LR_REFERENCE = 2e-4  # lr = 2e-4 · sqrt(16384 / latents) unless given
MAX_NAME_LENGTH = 200  # a file name: RUN/saes/<name>/, checkpoints/<name>.pt
AUX_TERMS: dict[str, type[losses.ResidualAux]] = {"auxk": losses.AuxK, "zipf": losses.AuxZipf}


def check(condition: bool, message: str) -> None:
    """Option validation: raise ValueError(message) unless `condition` holds."""
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class OptionGroup:
    """Root of the option groups: each group validates its fields, then defers to the next."""

    def __post_init__(self) -> None:
        pass


@dataclass(frozen=True)
class SAEOptions(OptionGroup):
    """Keys every variant accepts. `None` means "derive a default" (see `resolve`)."""

    latents: int | None = None  # F; default 16 · d
    lr: float | None = None  # Adam learning rate; default --lr, else 2e-4 · sqrt(16384 / F)
    dead_tokens: int = 1_000_000  # a latent that has not fired in this many tokens is dead
    name: str | None = None  # output name; default derived from the spec

    # keys that head the derived name, after the variant: ("k",) gives "topk-k32-4096"
    HEADLINE: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        check(self.latents is None or self.latents >= 1, "latents must be at least 1")
        check(self.lr is None or self.lr > 0, "lr must be positive")
        check(self.dead_tokens >= 1, "dead_tokens must be at least 1")
        check(
            self.name is None or _valid_name(self.name),
            f"name must be letters, digits, '.', '-' or '_', not starting with '.', at most "
            f"{MAX_NAME_LENGTH} bytes",
        )
        super().__post_init__()

    def resolve(self, d_in: int, default_lr: float | None) -> SAEOptions:
        """These options with the derived defaults filled in, for inputs of width `d_in`."""
        latents = self.latents or DEFAULT_EXPANSION * d_in
        lr = self.lr or default_lr or LR_REFERENCE * math.sqrt(16384 / latents)
        return dataclasses.replace(self, latents=latents, lr=lr)


@dataclass(frozen=True)
class KOptions(OptionGroup):
    k: int = 32  # active latents per token (BatchTopK, Feature Choice: on average)

    def __post_init__(self) -> None:
        check(self.k >= 1, "k must be at least 1")
        super().__post_init__()


@dataclass(frozen=True)
class AuxOptions(OptionGroup):
    aux: Literal["auxk", "zipf", "none"] = "auxk"  # auxiliary loss for dead/under-used latents
    k_aux: int = 512  # latents the auxiliary loss reconstructs the residual with
    aux_coef: float = 1 / 32  # its coefficient α

    def __post_init__(self) -> None:
        check(self.k_aux >= 1, "k_aux must be at least 1")
        check(self.aux_coef >= 0, "aux_coef must be >= 0")
        super().__post_init__()

    def aux_terms(self) -> list[losses.LossTerm]:
        term = AUX_TERMS.get(self.aux)
        return [] if term is None else [term(self.aux_coef, k_aux=self.k_aux)]


@dataclass(frozen=True)
class PenaltyOptions(OptionGroup):
    """A sparsity penalty λ, ramped up from 0 over the first `penalty_warmup` of training."""

    penalty_warmup: float = 0.05

    def __post_init__(self) -> None:
        check(0 <= self.penalty_warmup <= 1, "penalty_warmup must be a fraction in [0, 1]")
        super().__post_init__()


@dataclass(frozen=True)
class ThresholdOptions(OptionGroup):
    """Inference thresholds learnt as an EMA of the smallest selected value per batch."""

    threshold_decay: float = 0.999

    def __post_init__(self) -> None:
        check(0 < self.threshold_decay < 1, "threshold_decay must be in (0, 1)")
        super().__post_init__()


def _valid_name(name: str) -> bool:
    return (
        0 < len(name.encode()) <= MAX_NAME_LENGTH
        and name[0] != "."
        and all(c.isalnum() or c in ".-_" for c in name)
    )

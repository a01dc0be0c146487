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
from saekit.train.shape import parse_layers

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
class ShapeOptions(OptionGroup):
    """Where a dictionary reads and what it reconstructs (`saekit.train.shape`); every variant
    takes these keys. Hooks are written `a+b+c`."""

    hooks: str | None = None  # hooks read: one (an SAE there) or several (a crosscoder); --hook
    target: str | None = None  # hooks predicted instead of those read: a transcoder
    skip: bool = False  # a skip transcoder: a linear path from the input to the target
    layers: str | None = None  # a cross-layer transcoder over these layers, e.g. 0-3
    reads: str = "hook_resid_mid"  # CLT: the hook of each layer's block its latents read
    writes: str = "hook_mlp_out"  # CLT: the hook of each layer's block its latents write to

    def __post_init__(self) -> None:
        check(not self.skip or self.target is not None, "skip=true needs a target= hook")
        check(
            self.layers is None or (self.hooks is None and self.target is None),
            "layers= makes a cross-layer transcoder; it takes reads=/writes=, not hooks=/target=",
        )
        if self.layers is not None:
            parse_layers(self.layers)  # a ValueError naming the problem
        check(self.hooks is None or bool(self.hooks.strip("+ ")), "hooks= names no hook")
        check(self.target is None or bool(self.target.strip("+ ")), "target= names no hook")
        super().__post_init__()


SHAPE_KEYS = tuple(f.name for f in dataclasses.fields(ShapeOptions))
# the shape keys' defaults: a saved SAE's options leave out the keys at these values
SHAPE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ShapeOptions)}


@dataclass(frozen=True)
class SAEOptions(ShapeOptions):
    """Keys every variant accepts. `None` means "derive a default" (see `resolve`)."""

    latents: int | None = None  # F; default 16 · d
    lr: float | None = None  # Adam learning rate; default --lr, else 2e-4 · sqrt(16384 / F)
    dead_tokens: int = 1_000_000  # a latent that has not fired in this many tokens is dead
    name: str | None = None  # output name; default derived from the spec
    # weight of the loss-aware term, built from the store's gradients (docs/algorithms.md §14):
    # 0 leaves it out; 1 weighs the loss-relevant error like the reconstruction error
    loss_aware: float = 0.0

    # keys that head the derived name, after the variant: ("k",) gives "topk-k32-4096"
    HEADLINE: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        check(self.latents is None or self.latents >= 1, "latents must be at least 1")
        check(self.lr is None or self.lr > 0, "lr must be positive")
        check(self.dead_tokens >= 1, "dead_tokens must be at least 1")
        check(
            math.isfinite(self.loss_aware) and self.loss_aware >= 0,
            "loss_aware must be 0 (off) or a positive weight",
        )
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

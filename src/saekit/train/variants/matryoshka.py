"""Matryoshka BatchTopK (Bussmann, Nabeshima, Karvonen, Nanda 2025; docs/algorithms.md §12):
nested prefixes of the dictionary, each trained to reconstruct on its own.

The latents are cut into groups of sizes m_1, m_2, ... (`groups=64+192+768`: the prefixes are
the first 64, 256 and 1024 latents). One BatchTopK selection over the whole dictionary is shared
by every prefix; prefix p decodes only the codes of its latents, `ŷ_p = W_dec[:, :w_p] f[:w_p] +
b_dec` (b_dec in every prefix). The loss is the sum over prefixes of their NMSE (the full
dictionary is the last prefix) plus α·AuxK on the full reconstruction. Inference: BatchTopK's
learnt threshold, so each prefix is usable on its own as an SAE of its width.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from saekit.train import losses
from saekit.train.sparse import Code, DenseCode, SparseCode
from saekit.train.variants.batchtopk import BatchTopK, BatchTopKOptions
from saekit.train.variants.options import SAEOptions, check
from saekit.train.variants.registry import register

# Default prefixes when `groups` is not given (the authors' example): 1/16, 1/16, 1/8, 1/4 and
# 1/2 of the latents, i.e. prefixes of 1/16, 1/8, 1/4, 1/2 and all of them.
DEFAULT_FRACTIONS = (1 / 16, 1 / 16, 1 / 8, 1 / 4, 1 / 2)


@dataclass(frozen=True)
class MatryoshkaOptions(BatchTopKOptions):
    groups: str | None = None  # group sizes a+b+c summing to latents; default 1/16 ... 1/2

    def __post_init__(self) -> None:
        sizes = self.group_sizes
        check(sizes is None or all(size >= 1 for size in sizes), "groups must be positive sizes")
        check(
            sizes is None or self.latents is None or sum(sizes) == self.latents,
            f"groups must add up to latents={self.latents}",
        )
        super().__post_init__()

    @property
    def group_sizes(self) -> tuple[int, ...] | None:
        if self.groups is None:
            return None
        try:
            return tuple(int(part) for part in self.groups.split("+"))
        except ValueError:
            raise ValueError(f"groups={self.groups!r} is not sizes like 64+192+768") from None

    @property
    def widths(self) -> tuple[int, ...]:
        """The prefix widths (cumulative group sizes), the last the whole dictionary."""
        assert self.group_sizes is not None, "resolved options set groups"
        return tuple(int(w) for w in torch.tensor(self.group_sizes).cumsum(0))

    def resolve(self, d_in: int, default_lr: float | None) -> SAEOptions:
        resolved = super().resolve(d_in, default_lr)
        if self.groups is not None:
            return dataclasses.replace(resolved)  # checks the sum against the latents
        latents = resolved.latents
        assert latents is not None
        sizes = [max(1, round(latents * fraction)) for fraction in DEFAULT_FRACTIONS]
        sizes[-1] = latents - sum(sizes[:-1])
        return dataclasses.replace(resolved, groups="+".join(map(str, sizes)))


@register
class MatryoshkaBatchTopK(BatchTopK):
    """BatchTopK whose loss sums the NMSE of every prefix; AuxK on the full reconstruction."""

    name = "matryoshka"
    aliases = ()
    options_type = MatryoshkaOptions
    options: MatryoshkaOptions

    def loss_terms(self) -> list[losses.LossTerm]:
        return [PrefixNMSE(widths=self.options.widths), *self.options.aux_terms()]


@dataclass
class PrefixNMSE(losses.LossTerm):
    """Σ over prefix widths w of NMSE(y, ŷ_w), ŷ_w decoding only the codes of latents < w."""

    widths: tuple[int, ...] = ()
    name: ClassVar[str] = "matryoshka"
    reconstruction: ClassVar[bool] = True

    def __call__(self, sae, fwd, ctx) -> Tensor:
        skip_BE = sae.skip_path(fwd.x_BD)
        total = fwd.y_BE.new_zeros(())
        for width in self.widths:
            y_hat_BE = sae.decode_code(prefix(fwd.code, width))
            if skip_BE is not None:
                y_hat_BE = y_hat_BE + skip_BE
            total = total + losses.normalised_mse(fwd.y_BE, y_hat_BE)
        return total


def prefix(code: Code, width: int) -> Code:
    """The codes of the first `width` latents (the others zeroed)."""
    if isinstance(code, DenseCode):
        kept_F = torch.arange(code.f_BF.shape[1], device=code.f_BF.device) < width
        return DenseCode(code.f_BF * kept_F)
    kept_N = code.pattern.latent_N < width
    return SparseCode(code.pattern, code.values_N * kept_N)

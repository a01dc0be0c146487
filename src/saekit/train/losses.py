"""Loss terms. A variant's loss is the weighted sum of the terms its strategy lists.

Each term reads what it needs from the training forward pass (`Forward`) and the step's context
(latent usage, training progress) and returns a scalar. Its weight is `coefficient`, ramped
linearly from 0 over the first `warmup` fraction of training when `warmup > 0`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from saekit.base import devices
from saekit.train.sparse import SparseCode, SparsePattern

if TYPE_CHECKING:
    from saekit.train.sae import Dictionary, Forward
    from saekit.train.usage import LatentUsage


@dataclass
class StepContext:
    """What a loss term may need besides the forward pass."""

    usage: LatentUsage
    progress: float  # fraction of the training steps already done, in [0, 1]


def normalised_mse(target_BD: Tensor, estimate_BD: Tensor) -> Tensor:
    """Σ‖target − estimate‖² / Σ‖target − mean(target)‖² over the batch (FVU)."""
    error = (target_BD - estimate_BD).pow(2).sum()
    variance = (target_BD - target_BD.mean(dim=0)).pow(2).sum()
    return error / variance.clamp_min(torch.finfo(variance.dtype).tiny)


def squared_error(target_BD: Tensor, estimate_BD: Tensor) -> Tensor:
    """‖target − estimate‖², summed over features, averaged over the batch."""
    return (target_BD - estimate_BD).pow(2).sum(dim=1).mean()


@dataclass
class LossTerm:
    """One weighted term of a loss."""

    coefficient: float = 1.0
    warmup: float = 0.0

    name: ClassVar[str]
    # What the KL fine-tune does with the term (docs/algorithms.md §15): a variant's one
    # reconstruction term is what the KL is balanced against; terms that revive dead latents
    # are left out; every other term (sparsity, Gated's gate path) is kept.
    reconstruction: ClassVar[bool] = False
    revives_latents: ClassVar[bool] = False

    def weight(self, progress: float) -> float:
        if self.warmup > 0 and progress < self.warmup:
            return self.coefficient * progress / self.warmup
        return self.coefficient

    def __call__(self, sae: Dictionary, fwd: Forward, ctx: StepContext) -> Tensor:
        raise NotImplementedError


@dataclass
class NormalisedMSE(LossTerm):
    """NMSE(x, x̂): the TopK family's reconstruction loss."""

    name: ClassVar[str] = "nmse"
    reconstruction: ClassVar[bool] = True

    def __call__(self, sae: Dictionary, fwd: Forward, ctx: StepContext) -> Tensor:
        return normalised_mse(fwd.y_BE, fwd.y_hat_BE)


@dataclass
class SquaredError(LossTerm):
    """‖x − x̂‖²: the reconstruction loss of ReLU, Gated and JumpReLU."""

    name: ClassVar[str] = "mse"
    reconstruction: ClassVar[bool] = True

    def __call__(self, sae: Dictionary, fwd: Forward, ctx: StepContext) -> Tensor:
        return squared_error(fwd.y_BE, fwd.y_hat_BE)


@dataclass
class L1Penalty(LossTerm):
    """Σ_i a_i ‖d_i‖ (or Σ_i a_i without `decoder_weighted`) of non-negative activations `a`:
    the codes, or `extras[source]`; averaged over the batch."""

    source: str | None = None
    decoder_weighted: bool = True
    name: ClassVar[str] = "l1"

    def __call__(self, sae: Dictionary, fwd: Forward, ctx: StepContext) -> Tensor:
        a_BF = fwd.code.to_dense() if self.source is None else fwd.extras[self.source]
        if self.decoder_weighted:
            a_BF = a_BF * sae.sparsity_weights()
        return a_BF.sum(dim=1).mean()


@dataclass
class ResidualAux(LossTerm):
    """Reconstruct the detached residual e = x − x̂ from the top-`k_aux` pre-activations among
    candidate latents: ê = W_dec ReLU(TopK(z restricted to the candidates)) (no bias), loss
    NMSE(e, ê); zero when there is no candidate. Subclasses choose the candidates.

    The selection has a fixed size, min(k_aux, F) per token, whatever the number of candidates:
    where there are fewer, the rest of the selection are non-candidates with their values zeroed,
    which adds nothing to ê and passes no gradient. So the step never reads the number of
    candidates on the host (a GPU sync). On the CPU, where that read is free, a step without
    candidates skips the term (same result, less work).
    """

    k_aux: int = 512
    revives_latents: ClassVar[bool] = True

    def candidates(self, usage: LatentUsage) -> Tensor:
        raise NotImplementedError

    def __call__(self, sae: Dictionary, fwd: Forward, ctx: StepContext) -> Tensor:
        candidates_F = self.candidates(ctx.usage)
        any_candidate = candidates_F.any()
        if devices.host_reads_are_free(fwd.z_BF.device) and not any_candidate:
            return fwd.x_BD.new_zeros(())
        masked_BF = fwd.z_BF.masked_fill(~candidates_F, float("-inf"))
        indices_BK = masked_BF.topk(min(self.k_aux, sae.d_sae), dim=1).indices
        pattern = SparsePattern.from_row_indices(indices_BK, sae.d_sae)
        values_N = sae.gather_pre_activations(fwd.x_cent_BD, fwd.z_BF, pattern)
        values_N = values_N.relu() * candidates_F[pattern.latent_N]
        e_hat_BE = sae.decode_code(SparseCode(pattern, values_N), bias=False)
        return normalised_mse((fwd.y_BE - fwd.y_hat_BE).detach(), e_hat_BE) * any_candidate


@dataclass
class AuxK(ResidualAux):
    """AuxK (Gao et al.): the candidates are the dead latents."""

    name: ClassVar[str] = "auxk"

    def candidates(self, usage: LatentUsage) -> Tensor:
        return usage.dead_F()


@dataclass
class AuxZipf(ResidualAux):
    """aux_zipf, our reconstruction of Ayonrinde's loss: the candidates are the dead latents and
    those firing below half their expectation under a Zipf law fitted to the densities. With no
    under-used latent beyond the dead ones it is exactly AuxK."""

    name: ClassVar[str] = "aux_zipf"

    def candidates(self, usage: LatentUsage) -> Tensor:
        return usage.underused_F()


@dataclass
class FrozenDecoderReconstruction(LossTerm):
    """Gated's auxiliary loss ‖y − (sg(W_dec) ReLU(π_gate) + sg(b_dec))‖² (plus the detached skip
    term of a skip transcoder): it trains the gate path only (the decoder is a frozen copy)."""

    source: str = "gate_BF"
    name: ClassVar[str] = "gate_aux"

    def __call__(self, sae: Dictionary, fwd: Forward, ctx: StepContext) -> Tensor:
        y_hat_BE = sae.decode_frozen(fwd.extras[self.source])
        skip_BE = sae.skip_path(fwd.x_BD)
        if skip_BE is not None:  # the gate path explains what the skip path leaves
            y_hat_BE = y_hat_BE + skip_BE.detach()
        return squared_error(fwd.y_BE, y_hat_BE)


@dataclass
class LossAware(LossTerm):
    """The loss-aware term (docs/algorithms.md §14): the squared first-order change of the LM
    loss that the reconstruction error causes, Σ_B (gᵀ(ŷ − y))², over Σ_B (gᵀ(y − ȳ))² — the same
    for the batch mean standing in for every token —, with g the store's loss gradient at the
    targets. An empirical-Fisher-weighted NMSE: free of the scales of y and g, so one weight
    transfers across models and hooks. For a variant whose reconstruction loss is a squared error
    (not an NMSE) it is multiplied by the batch's mean ‖y − ȳ‖² (detached), so that a weight
    means the same for every variant: 1 weighs the loss-relevant error as much as the error."""

    squared_error_units: bool = False
    name: ClassVar[str] = "loss_aware"

    def __call__(self, sae: Dictionary, fwd: Forward, ctx: StepContext) -> Tensor:
        assert fwd.g_BE is not None, "a loss-aware dictionary reads the gradients"
        deviation_BE = fwd.y_BE - fwd.y_BE.mean(dim=0)
        change_B = (fwd.g_BE * (fwd.y_hat_BE - fwd.y_BE)).sum(dim=1)
        spread = (fwd.g_BE * deviation_BE).sum(dim=1).pow(2).sum()
        term = change_B.pow(2).sum() / spread.clamp_min(torch.finfo(spread.dtype).tiny)
        if self.squared_error_units:
            term = term * deviation_BE.pow(2).sum(dim=1).mean().detach()
        return term


def with_loss_aware(terms: list[LossTerm], weight: float) -> list[LossTerm]:
    """A variant's loss terms, plus the loss-aware term at `weight` when it is above 0."""
    if weight <= 0:
        return terms
    squared = any(isinstance(term, SquaredError) for term in terms)
    return [*terms, LossAware(coefficient=weight, squared_error_units=squared)]


@dataclass
class MeanL0(LossTerm):
    """Mean of `extras[source]`, a per-token L0 carrying straight-through gradients (JumpReLU)."""

    source: str = "l0_B"
    name: ClassVar[str] = "l0"

    def __call__(self, sae: Dictionary, fwd: Forward, ctx: StepContext) -> Tensor:
        return fwd.extras[self.source].mean()

"""JumpReLU with straight-through threshold gradients (docs/algorithms.md §8).

f = z · H(z − θ), θ = exp(log θ) per latent; loss ‖x − x̂‖² + λ Σ_i H(z_i − θ_i). The step H has
no gradient; straight-through estimators with the rectangle kernel K(u) = 1[|u| < ½] and
bandwidth ε give θ one:  ∂f/∂θ = −(θ/ε) K((z − θ)/ε),  ∂H/∂θ = −(1/ε) K((z − θ)/ε);
∂f/∂z = H(z − θ) and ∂H/∂z = 0.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from saekit.train import losses
from saekit.train.sae import Dictionary
from saekit.train.sparse import Code, DenseCode
from saekit.train.variants.base import Activation, InferenceForm
from saekit.train.variants.options import PenaltyOptions, SAEOptions, check
from saekit.train.variants.registry import register

# ε is 0.001 for inputs with E‖x‖² = 1 (dictionary_learning, Gemma Scope); saekit's inputs have
# E‖x‖ = √d, so pre-activations are √d times larger and so is the default ε.
REFERENCE_SCALE = 0.001
# θ₀: half the spread of an initial pre-activation (a unit-norm encoder row on an input of norm
# √d gives about N(0, 1)), whatever d. The references' 0.001 keeps almost every positive
# pre-activation of a run too short for θ to move (L0 ≈ 400 of 1024 latents after 200k tokens
# of the demo's store); 0.5 lands near TopK's default k there (docs/variants.md#jumprelu).
INITIAL_THRESHOLD = 0.5


@dataclass(frozen=True)
class JumpReLUOptions(PenaltyOptions, SAEOptions):
    l0: float = 1.0  # λ on the L0
    threshold: float | None = None  # initial θ; default INITIAL_THRESHOLD
    bandwidth: float | None = None  # ε of the rectangle kernel; default 0.001 · √d

    HEADLINE: ClassVar[tuple[str, ...]] = ("l0",)

    def __post_init__(self) -> None:
        check(self.l0 >= 0, "l0 must be >= 0")
        check(self.threshold is None or self.threshold > 0, "threshold must be positive")
        check(self.bandwidth is None or self.bandwidth > 0, "bandwidth must be positive")
        super().__post_init__()

    def resolve(self, d_in: int, default_lr: float | None) -> SAEOptions:
        return dataclasses.replace(
            super().resolve(d_in, default_lr),
            threshold=self.threshold or INITIAL_THRESHOLD,
            bandwidth=self.bandwidth or REFERENCE_SCALE * math.sqrt(d_in),
        )


def rectangle(u: Tensor) -> Tensor:
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, theta = ctx.saved_tensors
        kernel = rectangle((z - theta) / ctx.bandwidth)
        grad_theta = -(theta / ctx.bandwidth) * kernel * grad
        return (z > theta) * grad, grad_theta.sum_to_size(theta.shape), None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        z, theta = ctx.saved_tensors
        grad_theta = -(1 / ctx.bandwidth) * rectangle((z - theta) / ctx.bandwidth) * grad
        return torch.zeros_like(z), grad_theta.sum_to_size(theta.shape), None


def jump_relu(z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """z · H(z − θ) with straight-through gradients (see the module docstring)."""
    return _JumpReLU.apply(z, theta, bandwidth)


def step(z: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """H(z − θ) with straight-through gradients for θ only."""
    return _Step.apply(z, theta, bandwidth)


@register
class JumpReLU(Activation):
    """f = z·H(z − θ) with a learnt θ per latent; ‖x − x̂‖² + λ·L0."""

    name = "jumprelu"
    options_type = JumpReLUOptions
    adam_betas = (0.0, 0.999)
    saelens_architecture = "jumprelu"
    options: JumpReLUOptions

    def __init__(self, options: JumpReLUOptions, d_in: int, d_sae: int) -> None:
        super().__init__(options, d_in, d_sae)
        assert options.threshold is not None, "resolved options set threshold"
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(options.threshold)))

    def train_code(
        self, sae: Dictionary, x_cent_BD: Tensor, gradients_BD: Tensor | None
    ) -> tuple[Code, Tensor, dict[str, Tensor]]:
        z_BF = sae.pre_activations_centred(x_cent_BD)
        theta_F, bandwidth = self.log_threshold.exp(), self.options.bandwidth
        f_BF = jump_relu(z_BF, theta_F, bandwidth)
        l0_B = step(z_BF, theta_F, bandwidth).sum(dim=1)
        return DenseCode(f_BF), z_BF, {"l0_B": l0_B}

    def encode(self, sae: Dictionary, x_BD: Tensor, gradients_BD: Tensor | None) -> Code:
        z_BF = sae.pre_activations(x_BD)
        return DenseCode(z_BF * (z_BF > self.log_threshold.exp()))

    def loss_terms(self) -> list[losses.LossTerm]:
        penalty = losses.MeanL0(self.options.l0, self.options.penalty_warmup)
        return [losses.SquaredError(), penalty]

    def saelens_tensors(self, sae: Dictionary) -> dict[str, Tensor]:
        return {**super().saelens_tensors(sae), "threshold": self.log_threshold.exp()}

    def inference_form(self, sae: Dictionary) -> InferenceForm:
        """z · 1[z > θ] with θ = exp(log θ) > 0."""
        threshold_F = self.log_threshold.exp().detach()
        return InferenceForm("jumprelu", sae.b_enc.detach(), threshold_F=threshold_F)

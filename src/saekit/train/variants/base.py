"""The activation strategy: what makes one variant differ from another.

A variant is one small module that defines an options dataclass (`variants.options`) and an
`Activation` subclass decorated with `@register`. The SAE core (`saekit.train.sae.SAE`) calls
the strategy to turn pre-activations into codes, in three modes: training (batch selection,
threshold EMAs), inference (one token at a time) and batch (the training-time selection,
without updates).
Selection-based variants (TopK family) subclass `Selection` and only say which entries to
keep; batch-dependent ones subclass `BatchSelection`, which adds learnt inference thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from saekit.train import losses
from saekit.train.sparse import Code, SparseCode, SparsePattern
from saekit.train.thresholds import WindowedEMA
from saekit.train.variants import modes
from saekit.train.variants.options import SAEOptions

if TYPE_CHECKING:
    from saekit.train.sae import Dictionary

Mode = Literal["train", "batch", "infer"]


@dataclass(frozen=True)
class InferenceForm:
    """How a variant's inference-mode codes compute as a standard activation of the encoder,
    for exports to other libraries: with h = row_scale ∘ (W_enc (x − b_in)) + bias,

        relu:     f = ReLU(h)
        jumprelu: f = ReLU(h) · 1[h > threshold]
        topk:     f = ReLU(TopK_k(h))

    (`row_scale` None: 1). Exporters fold b_in, the scale and the bias into their formats."""

    kind: Literal["relu", "jumprelu", "topk"]
    bias_F: Tensor
    row_scale_F: Tensor | None = None
    threshold_F: Tensor | None = None
    k: int | None = None


class Activation(nn.Module):
    """How a variant turns pre-activations into codes, and which loss terms train it.

    Subclasses set the class attributes, implement `train_code` and `encode`, and may own
    parameters and buffers (they are saved with the SAE).
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    options_type: ClassVar[type[SAEOptions]]
    needs_gradients: ClassVar[bool] = False  # reads ∂loss/∂x during training
    unit_norm_decoder: ClassVar[bool] = True  # project gradients, renormalise after each step
    decoder_init_norm: ClassVar[float] = 1.0
    b_dec_from_data: ClassVar[bool] = True  # init b_dec to the geometric median of the data
    adam_betas: ClassVar[tuple[float, float]] = (0.9, 0.999)
    saelens_architecture: ClassVar[str]
    # products of a [B, D] and a [D, F] matrix per training step (forward and backward): what a
    # step of this variant costs, for the recipes' estimates
    dense_products: ClassVar[int] = 6
    # Modules (attribute names) whose state SAEs saved by an earlier saekit lack: loading such
    # an SAE keeps their initial state, which must reproduce what that saekit computed.
    later_state: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: Any, d_in: int, d_sae: int) -> None:
        super().__init__()
        self.options = options

    def train_code(
        self, sae: Dictionary, x_cent_BD: Tensor, gradients_BD: Tensor | None
    ) -> tuple[Code, Tensor, dict[str, Tensor]]:
        """Training-mode codes of `x_cent = x − b_dec`: (codes, pre-activations z, extras)."""
        raise NotImplementedError

    def encode(self, sae: Dictionary, x_BD: Tensor, gradients_BD: Tensor | None) -> Code:
        """Inference-mode codes of each token on its own."""
        raise NotImplementedError

    def encode_batch(self, sae: Dictionary, x_BD: Tensor, gradients_BD: Tensor | None) -> Code:
        """Codes with the training-time selection over this batch (no state updated)."""
        return self.encode(sae, x_BD, gradients_BD)

    @classmethod
    def modes(cls, options: Any, diagnostic: bool = False) -> tuple[str, ...]:
        """The inference modes an SAE of these options is evaluated in (`variants.modes`), the
        first the one it is used in; `diagnostic` adds modes that only explain a result."""
        return (modes.INFERENCE,)

    def code_in(
        self, mode: str, sae: Dictionary, x_BD: Tensor, gradients_BD: Tensor | None
    ) -> Code:
        """Codes of raw activations in one of this variant's modes (`gradients_BD` is read only
        by modes that use gradients)."""
        self._check_mode(mode)
        return self.encode(sae, x_BD, None)

    def _check_mode(self, mode: str) -> None:
        if mode not in self.modes(self.options, diagnostic=True):
            raise ValueError(f"variant {self.name} has no inference mode {mode!r}")

    def loss_terms(self) -> list[losses.LossTerm]:
        raise NotImplementedError

    def calibrate_(
        self, sae: Dictionary, x_BD: Tensor, gradients_BD: Tensor | None
    ) -> dict[str, float]:
        """Set data-dependent settings on a sample after initialisation; return them."""
        return {}

    def step_metrics(self) -> dict[str, Tensor]:
        """Variant-specific scalars of the last training step, logged to metrics.jsonl."""
        return {}

    def saelens_tensors(self, sae: Dictionary) -> dict[str, Tensor]:
        """Tensors of the SAELens export, keyed and shaped as SAELens' `saelens_architecture`."""
        return {
            "W_enc": sae.W_enc.T,
            "b_enc": sae.b_enc,
            "W_dec": sae.W_dec.T,
            "b_dec": sae.b_dec,
        }

    def saelens_cfg(self) -> dict[str, Any]:
        """Architecture-specific keys of the SAELens cfg.json."""
        return {}

    def inference_form(self, sae: Dictionary) -> InferenceForm:
        """The inference mode as a standard activation (`InferenceForm`)."""
        raise NotImplementedError


class Selection(Activation):
    """Variants that keep selected entries of z and zero the rest (TopK, BatchTopK, FC, g-SAE).

    Training selects on z read without autograd, then differentiates through the kept entries
    only (`gather_pre_activations`) and decodes sparsely, unless k/F is so large that dense
    products are faster (`sparse_is_faster`).
    """

    options: Any
    dense_products = 4  # the decoder reads k columns per row, not F

    def select(
        self, sae: Dictionary, z_BF: Tensor, gradients_BD: Tensor | None, mode: Mode
    ) -> tuple[SparsePattern, Tensor | None]:
        """The entries to keep, and an optional (detached) factor for their values."""
        raise NotImplementedError

    def train_code(
        self, sae: Dictionary, x_cent_BD: Tensor, gradients_BD: Tensor | None
    ) -> tuple[Code, Tensor, dict[str, Tensor]]:
        sparse = sae.sparse_training()
        with torch.set_grad_enabled(not sparse and torch.is_grad_enabled()):
            z_BF = sae.pre_activations_centred(x_cent_BD)
        pattern, factor_N = self.select(sae, z_BF.detach(), gradients_BD, "train")
        if sparse:
            values_N = sae.gather_pre_activations(x_cent_BD, z_BF, pattern)
        else:
            values_N = pattern.take(z_BF)
        if factor_N is not None:
            values_N = values_N * factor_N
        return SparseCode(pattern, values_N.relu()), z_BF, {}

    def encode(self, sae: Dictionary, x_BD: Tensor, gradients_BD: Tensor | None) -> Code:
        return self._code(sae, x_BD, gradients_BD, "infer")

    def encode_batch(self, sae: Dictionary, x_BD: Tensor, gradients_BD: Tensor | None) -> Code:
        return self._code(sae, x_BD, gradients_BD, "batch")

    def _code(self, sae: Dictionary, x_BD: Tensor, gradients_BD: Tensor | None, mode: Mode) -> Code:
        z_BF = sae.pre_activations(x_BD)
        pattern, factor_N = self.select(sae, z_BF, gradients_BD, mode)
        values_N = pattern.take(z_BF)
        if factor_N is not None:
            values_N = values_N * factor_N
        return SparseCode(pattern, values_N.relu())

    def loss_terms(self) -> list[losses.LossTerm]:
        return [losses.NormalisedMSE(), *self.options.aux_terms()]

    def inference_form(self, sae: Dictionary) -> InferenceForm:
        return InferenceForm("topk", sae.b_enc.detach(), k=self.options.k)


class BatchSelection(Selection):
    """Variants whose selection depends on the whole batch (BatchTopK, Feature Choice).

    Training selects over the batch and updates thresholds θ (an EMA of the smallest selected
    values, one global or one per latent); inference keeps each token's entries with z > θ
    (a JumpReLU), so a saved SAE encodes one token at a time.
    """

    per_latent_threshold: ClassVar[bool]
    saelens_architecture = "jumprelu"

    def __init__(self, options: Any, d_in: int, d_sae: int) -> None:
        super().__init__(options, d_in, d_sae)
        shape = (d_sae,) if self.per_latent_threshold else ()
        self.threshold = WindowedEMA(shape, options.threshold_decay)

    def select_batch(self, z_BF: Tensor) -> tuple[SparsePattern, Tensor, Tensor]:
        """(kept entries, their smallest value per threshold, whether each threshold saw one)."""
        raise NotImplementedError

    def select(
        self, sae: Dictionary, z_BF: Tensor, gradients_BD: Tensor | None, mode: Mode
    ) -> tuple[SparsePattern, Tensor | None]:
        if mode == "infer":
            return SparsePattern.from_mask(z_BF > self.threshold.value), None
        with torch.no_grad():
            pattern, smallest, observed = self.select_batch(z_BF)
            if mode == "train":
                self.threshold.update(smallest, observed)
        return pattern, None

    @classmethod
    def modes(cls, options: Any, diagnostic: bool = False) -> tuple[str, ...]:
        return (modes.THRESHOLD, modes.BATCH)

    def code_in(
        self, mode: str, sae: Dictionary, x_BD: Tensor, gradients_BD: Tensor | None
    ) -> Code:
        self._check_mode(mode)
        if mode == modes.BATCH:
            return self.encode_batch(sae, x_BD, None)
        return self.encode(sae, x_BD, None)

    def saelens_tensors(self, sae: Dictionary) -> dict[str, Tensor]:
        return {**super().saelens_tensors(sae), "threshold": self.threshold.value.expand(sae.d_sae)}

    def inference_form(self, sae: Dictionary) -> InferenceForm:
        """z · 1[z > θ] with θ > 0 (an EMA of positive values): a JumpReLU."""
        threshold_F = self.threshold.value.expand(sae.d_sae).detach()
        return InferenceForm("jumprelu", sae.b_enc.detach(), threshold_F=threshold_F)

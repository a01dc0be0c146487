"""One dictionary being trained: its module, optimiser, loss terms, latent usage and step
metrics; and what a run reads from every batch for all of them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saekit.cache_format.schema import ACTIVATIONS, GRADIENTS, hook_field
from saekit.train.losses import LossTerm, StepContext, normalised_mse, with_loss_aware
from saekit.train.sae import Dictionary, Forward
from saekit.train.schedule import Plan
from saekit.train.shape import Shape
from saekit.train.spec import ResolvedSpec
from saekit.train.usage import LatentUsage

L0_QUANTILES = {"l0_p1": 0.01, "l0_p50": 0.5, "l0_p99": 0.99}


@dataclass(frozen=True)
class RunReads:
    """The hooks a run reads from every batch (each once, whatever the number of dictionaries
    reading it), and those whose gradients it reads: the targets of gradient-based ones."""

    hooks: tuple[str, ...]
    gradient_hooks: tuple[str, ...]

    @classmethod
    def of(cls, specs: list[ResolvedSpec], shapes: Mapping[str, Shape]) -> RunReads:
        hooks = dict.fromkeys(h for spec in specs for h in shapes[spec.name].hooks)
        gradients = dict.fromkeys(
            h for spec in specs if spec.needs_gradients for h in shapes[spec.name].target_hooks
        )
        return cls(tuple(hooks), tuple(gradients))

    def fields(self) -> tuple[str, ...]:
        """The loader's fields: every hook's activations, the gradient hooks' gradients."""
        return (
            *(hook_field(ACTIVATIONS, hook) for hook in self.hooks),
            *(hook_field(GRADIENTS, hook) for hook in self.gradient_hooks),
        )

    def scaled(
        self, batch: Mapping[str, Tensor], scales: Mapping[str, float]
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Every hook's activations times its scale c, and gradients divided by it (the chain
        rule: ∂L/∂(c x) = g / c), by hook."""
        x_by_hook = {h: batch[hook_field(ACTIVATIONS, h)] * scales[h] for h in self.hooks}
        g_by_hook = {h: batch[hook_field(GRADIENTS, h)] / scales[h] for h in self.gradient_hooks}
        return x_by_hook, g_by_hook


def concatenated(by_hook: Mapping[str, Tensor], hooks: tuple[str, ...]) -> Tensor:
    """The hooks' tensors side by side (one hook: its tensor itself)."""
    if len(hooks) == 1:
        return by_hook[hooks[0]]
    return torch.cat([by_hook[hook] for hook in hooks], dim=1)


class Member:
    """Trains one SAE on the batches the trainer hands it (Adam per SAE, clipped gradients).

    `lr` and `terms` replace the spec's learning rate and the variant's loss terms (the KL
    fine-tune trains a saved SAE with its own loss); a step is `forward`, a loss from the
    forward pass, then `update`.
    """

    def __init__(
        self,
        spec: ResolvedSpec,
        sae: Dictionary,
        plan: Plan,
        grad_clip: float,
        lr: float | None = None,
        terms: list[LossTerm] | None = None,
    ) -> None:
        self.spec = spec
        self.sae = sae
        self.plan = plan
        self.grad_clip = grad_clip
        self.base_lr = spec.lr if lr is None else lr
        self.activation = sae.activation
        self.optimizer = torch.optim.Adam(
            sae.parameters(), lr=self.base_lr, betas=self.activation.adam_betas
        )
        self.terms = (
            with_loss_aware(self.activation.loss_terms(), spec.options.loss_aware)
            if terms is None
            else terms
        )
        self.usage = LatentUsage(sae.d_sae, spec.options.dead_tokens, sae.device)
        self._sums: dict[str, Tensor] = {}
        self._steps_summed = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def needs_gradients(self) -> bool:
        return self.spec.needs_gradients

    def inputs(
        self, x_by_hook: Mapping[str, Tensor], g_by_hook: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(input x, target y — None when it is x —, gradients at the targets or None) of this
        dictionary, from a batch's scaled tensors by hook."""
        shape = self.sae.shape
        x_BD = concatenated(x_by_hook, shape.source_hooks)
        y_BE = None if shape.reconstructs_its_input else concatenated(x_by_hook, shape.target_hooks)
        g_BE = concatenated(g_by_hook, shape.target_hooks) if self.needs_gradients else None
        return x_BD, y_BE, g_BE

    def step(
        self,
        x_BD: Tensor,
        gradients_BE: Tensor | None,
        step: int,
        y_BE: Tensor | None = None,
    ) -> None:
        """One optimiser step on one batch (inputs already scaled; `y_BE` the target when it is
        not the input)."""
        fwd = self.forward(x_BD, gradients_BE, step, y_BE)
        values = self.term_values(fwd, step)
        progress = self.plan.progress(step)
        loss = torch.stack([term.weight(progress) * values[term.name] for term in self.terms]).sum()
        self.update(fwd, loss, {f"loss/{name}": value for name, value in values.items()})

    def forward(
        self, x_BD: Tensor, gradients_BE: Tensor | None, step: int, y_BE: Tensor | None = None
    ) -> Forward:
        """Set the learning rate of `step`, then the training forward pass of one batch."""
        lr = self.base_lr * self.plan.lr_factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        gradients_BE = gradients_BE if self.needs_gradients else None
        return self.sae.training_forward(x_BD, gradients_BE, y_BE)

    def term_values(self, fwd: Forward, step: int) -> dict[str, Tensor]:
        """Each loss term's value (unweighted) on the forward pass, by name."""
        context = StepContext(self.usage, self.plan.progress(step))
        return {term.name: term(self.sae, fwd, context) for term in self.terms}

    def update(self, fwd: Forward, loss: Tensor, logged: Mapping[str, Tensor]) -> None:
        """Backward pass of `loss`, then the optimiser step (decoder kept unit-norm where the
        variant wants it), the latent usage and the step's metrics (`logged`: extra scalars,
        e.g. each loss term)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.activation.unit_norm_decoder:
            self.sae.remove_parallel_decoder_grad_()
        torch.nn.utils.clip_grad_norm_(self.sae.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.activation.unit_norm_decoder:
            self.sae.normalise_decoder_()
        self.usage.update(fwd.code.fire_counts_F(), len(fwd.x_BD))
        with torch.no_grad():
            l0_B = fwd.code.l0_B()
            self._add(
                {
                    "loss": loss,
                    **logged,
                    "nmse": normalised_mse(fwd.y_BE, fwd.y_hat_BE),
                    "l0": l0_B.mean(),
                    **{key: l0_B.quantile(q) for key, q in L0_QUANTILES.items()},
                    "l0_zero": (l0_B == 0).float().mean(),
                    **self.activation.step_metrics(),
                }
            )

    def _add(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            value = torch.as_tensor(value).detach()
            self._sums[key] = self._sums[key] + value if key in self._sums else value
        self._steps_summed += 1

    def take_metrics(self) -> dict[str, float]:
        """Metrics averaged over the steps since the last call (plus the dead fraction now)."""
        metrics = {key: float(total) / self._steps_summed for key, total in self._sums.items()}
        metrics["dead_fraction"] = self.usage.dead_fraction()
        self._sums, self._steps_summed = {}, 0
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "sae": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "usage": self.usage.state_dict(),
            "metric_sums": dict(self._sums),
            "metric_steps": self._steps_summed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state saved by `state_dict`, from whatever device its tensors are on."""
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])  # moments to the parameters' device
        self.usage.load_state_dict(state["usage"])
        device = self.sae.device
        self._sums = {key: total.to(device) for key, total in state["metric_sums"].items()}
        self._steps_summed = state["metric_steps"]

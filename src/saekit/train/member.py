"""One SAE being trained: its module, optimiser, loss terms, latent usage and step metrics."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saekit.train.losses import StepContext, normalised_mse
from saekit.train.sae import SAE
from saekit.train.schedule import Plan
from saekit.train.spec import ResolvedSpec
from saekit.train.usage import LatentUsage

L0_QUANTILES = {"l0_p1": 0.01, "l0_p50": 0.5, "l0_p99": 0.99}


class Member:
    """Trains one SAE on the batches the trainer hands it (Adam per SAE, clipped gradients)."""

    def __init__(self, spec: ResolvedSpec, sae: SAE, plan: Plan, grad_clip: float) -> None:
        self.spec = spec
        self.sae = sae
        self.plan = plan
        self.grad_clip = grad_clip
        self.base_lr = spec.lr
        self.activation = sae.activation
        self.optimizer = torch.optim.Adam(
            sae.parameters(), lr=self.base_lr, betas=self.activation.adam_betas
        )
        self.terms = self.activation.loss_terms()
        self.usage = LatentUsage(sae.d_sae, spec.options.dead_tokens, sae.W_dec.device)
        self._sums: dict[str, Tensor] = {}
        self._steps_summed = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def needs_gradients(self) -> bool:
        return self.activation.needs_gradients

    def step(self, x_BD: Tensor, gradients_BD: Tensor | None, step: int) -> None:
        """One optimiser step on one batch (inputs already scaled)."""
        lr = self.base_lr * self.plan.lr_factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        progress = self.plan.progress(step)
        fwd = self.sae.training_forward(x_BD, gradients_BD if self.needs_gradients else None)
        context = StepContext(self.usage, progress)
        values = {term.name: term(self.sae, fwd, context) for term in self.terms}
        loss = torch.stack([term.weight(progress) * values[term.name] for term in self.terms]).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.activation.unit_norm_decoder:
            self.sae.remove_parallel_decoder_grad_()
        torch.nn.utils.clip_grad_norm_(self.sae.parameters(), self.grad_clip)
        self.optimizer.step()
        if self.activation.unit_norm_decoder:
            self.sae.normalise_decoder_()
        self.usage.update(fwd.code.fire_counts_F(), len(x_BD))
        with torch.no_grad():
            l0_B = fwd.code.l0_B()
            self._add(
                {
                    "loss": loss,
                    **{f"loss/{name}": value for name, value in values.items()},
                    "nmse": normalised_mse(fwd.x_BD, fwd.x_hat_BD),
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
        device = self.sae.W_dec.device
        self._sums = {key: total.to(device) for key, total in state["metric_sums"].items()}
        self._steps_summed = state["metric_steps"]

"""The one evaluation path: SAEs (targets) measured on a store's held-out tokens, as report rows.

Offline, every target reads the same held-out rows (position 0 excluded); online, the LM is re-run
on the held-out contexts with each target spliced in; steering, for the SAEs asked for, adds
decoder directions at the last position of a sample of those contexts. `sae eval`, `sae recipe`
and `sae inspect` all measure through this module, so a fix here reaches every report.

A row (`report_row`) is one target: which SAE, in which mode, its settings, and its `offline`,
`online` and `steering` numbers (`online` is None without a model; `steering` is None for SAEs
not steered, and the same for every mode of one SAE: decoder directions do not depend on it).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from saekit.cache_format import ActivationStore
from saekit.cache_format.nonfinite import NonFinitePolicy, named_rows
from saekit.cache_format.schema import ACTIVATIONS, hook_field
from saekit.evaluate.heldout import (
    check_holdout,
    heldout_contexts,
    heldout_row_slots,
    holdout_batches,
    training_mean,
)
from saekit.evaluate.offline import offline_metrics
from saekit.evaluate.online import online_metrics
from saekit.evaluate.steering import steering_metrics, steering_sweep
from saekit.evaluate.targets import Target
from saekit.lm import CheckedModel, LanguageModel, check_hooks_match, check_token_ids
from saekit.train import concatenated

STEERING_SAMPLE_ROWS = 8192  # held-out rows whose codes choose the latents steered


@dataclass(frozen=True)
class Steering:
    """How the SAEs asked for are steered (see `steering.py`): a sample of `latents` alive
    latents on `contexts` held-out contexts, each latent pushed by its typical contribution, or
    by α · E‖x‖ along its unit direction for each α of `alphas` (a sweep)."""

    latents: int
    contexts: int
    alphas: tuple[float, ...] = ()


@dataclass(frozen=True)
class EvalSettings:
    """What an evaluation reads and how."""

    offline_tokens: int | None = None  # held-out rows read offline (None: all)
    online_tokens: int | None = None  # held-out tokens spliced into the LM (None: all)
    batch_size: int = 8  # contexts per LM forward pass
    seed: int = 0  # the sample of steering contexts and latents
    steering: Steering | None = None


class Progress(Protocol):
    def stage(self, description: str, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...


ModelLoader = Callable[[list[str]], CheckedModel]  # hooks -> the model, checked for the store


class Evaluation:
    """Targets measured on one store's held-out tokens, on one device.

    `load_model` loads the LM (checked against the store) the first time an online number is
    needed; without it the evaluation is offline only. The training means, the held-out contexts
    and the model are computed once and reused by every call of `rows`.
    """

    def __init__(
        self,
        store: ActivationStore,
        device: torch.device,
        settings: EvalSettings,
        policy: NonFinitePolicy | None = None,
        load_model: ModelLoader | None = None,
        progress: Progress | None = None,
    ) -> None:
        check_holdout(store)
        self.store, self.device, self.settings = store, device, settings
        self.policy = policy or NonFinitePolicy()
        self.progress = progress
        self._load_model = load_model
        self._model: CheckedModel | None = None
        self._checked_hooks: set[str] = set()
        self._means: dict[str, Tensor] = {}
        self._contexts: Tensor | None = None

    @property
    def online(self) -> bool:
        return self._load_model is not None

    @property
    def contexts(self) -> Tensor:
        """The held-out contexts spliced into the LM: [n_contexts, T] token ids."""
        if self._contexts is None:
            self._contexts = heldout_contexts(self.store, self.settings.online_tokens)
        return self._contexts

    @property
    def model_name(self) -> str | None:
        return self._model.model.name if self._model is not None else None

    def warnings(self) -> list[str]:
        """What a reader of the numbers must know: another model, rows left out."""
        warnings = list(self._model.warnings) if self._model is not None else []
        if self.policy.rows:
            warnings.append(
                f"{len(self.policy.rows)} store rows holding NaN or Inf were left out "
                f"(--skip-nonfinite): rows {named_rows(sorted(self.policy.rows))}"
            )
        return warnings

    def means(self, hooks: Collection[str]) -> dict[str, Tensor]:
        """The training mean of each hook (the mean ablation, and NMSE's baseline)."""
        for hook in hooks:
            if hook not in self._means:
                self._means[hook] = training_mean(self.store, hook, self.policy).to(self.device)
        return {hook: self._means[hook] for hook in hooks}

    def model(self, hooks: list[str]) -> LanguageModel:
        """The LM, loaded on first use and checked at every hook it is asked for."""
        assert self._load_model is not None, "an offline evaluation has no model"
        if self._model is None:
            self._model = self._load_model(hooks)
            self._checked_hooks.update(hooks)
            check_token_ids(self.contexts, self._model.model, self.store)
        new = [hook for hook in hooks if hook not in self._checked_hooks]
        if new:
            check_hooks_match(self._model.model, self.store, new)
            self._checked_hooks.update(new)
        return self._model.model

    def rows(
        self,
        targets: list[Target],
        steer: Collection[str] = (),
        steering: Steering | None = None,
    ) -> list[dict[str, Any]]:
        """Every target measured, as report rows in the targets' order; the SAEs named in
        `steer` are also steered when the evaluation is online, as `steering` says (default:
        `settings.steering`)."""
        if not targets:
            return []
        hooks = sorted({h for t in targets for h in t.shape.hooks})
        means = self.means(hooks)
        self._stage("offline metrics", None)
        offline = offline_metrics(
            self.store, targets, means, self.settings.offline_tokens, self.device, self.policy
        )
        online: dict[str, dict] = {}
        steered: dict[str, dict | None] = {}
        if self.online:
            model = self.model(hooks)
            self._stage("splicing SAEs into the LM", len(self.contexts))
            online = online_metrics(
                model,
                self.contexts,
                targets,
                means,
                self.settings.batch_size,
                self.device,
                on_batch=self.progress.advance if self.progress else lambda n: None,
                row_slots=heldout_row_slots(self.store, self.settings.online_tokens),
            )
            plan = steering or self.settings.steering
            if plan is not None and steer:
                steered = self._steer(model, targets, set(steer), plan)
        return [
            report_row(t, offline[t.label], online.get(t.label), steered.get(t.name))
            for t in targets
        ]

    def _stage(self, description: str, total: int | None) -> None:
        if self.progress is not None:
            self.progress.stage(description, total)

    def _steer(
        self, model: LanguageModel, targets: list[Target], names: set[str], plan: Steering
    ) -> dict[str, dict | None]:
        """Steering numbers of each SAE named, by name."""
        generator = torch.Generator().manual_seed(self.settings.seed)
        order = torch.randperm(len(self.contexts), generator=generator)
        picked = self.contexts[order[: plan.contexts]]
        results: dict[str, dict | None] = {}
        for target in targets:
            if target.name not in names or target.name in results:
                continue
            sources = target.shape.source_hooks
            fields = tuple(hook_field(ACTIVATIONS, h) for h in sources)
            batches = holdout_batches(
                self.store, None, fields, STEERING_SAMPLE_ROWS, STEERING_SAMPLE_ROWS, self.policy
            )
            sample_BD = concatenated(_by_hook(next(batches), sources), sources)
            if plan.alphas:
                results[target.name] = steering_sweep(
                    model, target.sae, sample_BD, picked, plan.alphas, plan.latents,
                    self.settings.seed,
                )  # fmt: skip
            else:
                results[target.name] = steering_metrics(
                    model, target.sae, sample_BD, picked, plan.latents, self.settings.seed
                )
        return results


def _by_hook(batch: dict[str, Tensor], hooks: tuple[str, ...]) -> dict[str, Tensor]:
    return {hook: batch[hook_field(ACTIVATIONS, hook)] for hook in hooks}


def report_row(
    target: Target, offline: dict, online: dict | None, steering: dict | None
) -> dict[str, Any]:
    """One target's row: which SAE in which mode, its settings, and its numbers."""
    cfg = target.sae.cfg
    return {
        "run": target.run,
        "seed": cfg.training.get("seed"),
        "name": target.name,
        "label": target.label,
        "variant": target.variant,
        "mode": target.mode,
        "hook": target.hook,
        "shape": cfg.shape,
        "d_sae": target.sae.d_sae,
        "k": cfg.k,
        "options": cfg.options,
        "training": cfg.training,
        "finetune": cfg.finetune,
        "offline": offline,
        "online": online,
        "steering": steering,
    }

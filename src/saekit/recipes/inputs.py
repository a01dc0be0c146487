"""What `sae recipe` was asked for, checked before anything is written: the recipes, the preset,
the store (or the harvest that makes it), the LM's shape and each recipe's hooks."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saekit.base.errors import SaekitError
from saekit.base.tracking import Tracking
from saekit.cache_format import ActivationStore
from saekit.evaluate import check_holdout
from saekit.harvest import HarvestConfig
from saekit.lm import ModelShape, check_model_files, load_tokenizer
from saekit.recipes.catalog import RECIPES
from saekit.recipes.declarations import Recipe, Scope, residual_stream
from saekit.recipes.presets import PRESETS, Preset
from saekit.recipes.workspace import Workspace


@dataclass(frozen=True)
class RecipeRequest:
    """Everything `sae recipe` takes. `preset` is a name or a `Preset` (tests shrink one)."""

    recipes: tuple[str, ...]  # gsae, choice, gated, or all
    out: Path
    model: str | None = None
    dataset: str | None = None
    store: str | None = None
    preset: str | Preset = "small"
    device: str = "auto"
    storage_options: dict[str, Any] | None = None
    command: str = "sae recipe"
    allow_other_model: bool = False  # a --model that is not the --store's (the report says so)
    tracking: Tracking = field(default_factory=Tracking)  # training runs' wandb / TensorBoard
    cluster: str | None = None  # train and evaluate on this dask cluster (`local[:W]`, ADDRESS)


@dataclass(frozen=True)
class Inputs:
    """A checked request: the store (None while it is still to be harvested), the model's shape,
    the preset's residual hook (what recipe.json records) and each recipe's hooks."""

    recipes: list[Recipe]
    preset: Preset
    store: ActivationStore | None
    model: ModelShape
    hook: str
    hooks: Mapping[str, tuple[str, ...]]  # recipe name -> the hooks it trains on, main first
    warnings: list[str] = field(default_factory=list)  # what the report must say

    def scope(self, recipe: Recipe) -> Scope:
        """The recipe's scope: its grid at the preset, its hooks and their width."""
        layer = self.preset.layer_for(self.model.n_layers)
        hooks = self.hooks.get(recipe.name) or recipe.hooks(layer)
        known = self.store is not None and hooks[0] in self.store.spec.hooks
        d_in = self.store.spec.hooks[hooks[0]].d if known else self.model.d_model
        return recipe.scope(self.preset, d_in, hooks)

    @property
    def harvested_hooks(self) -> tuple[str, ...]:
        """Every hook of the chosen recipes, each once."""
        return tuple(dict.fromkeys(h for r in self.recipes for h in self.hooks[r.name]))

    @property
    def gradient_hooks(self) -> tuple[str, ...]:
        """The hooks of the recipes that read loss gradients."""
        return tuple(
            dict.fromkeys(h for r in self.recipes if r.needs_gradients for h in self.hooks[r.name])
        )


def resolve_recipes(names: tuple[str, ...]) -> list[Recipe]:
    chosen: list[str] = []
    for name in names:
        if name == "all":
            chosen += list(RECIPES)
        elif name in RECIPES:
            chosen.append(name)
        else:
            raise SaekitError(
                f"unknown recipe '{name}'; choose from {', '.join([*RECIPES, 'all'])}"
            )
    return [RECIPES[n] for n in dict.fromkeys(chosen)]


def resolve_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise SaekitError(f"unknown preset '{preset}'; choose {' or '.join(PRESETS)}")
    return PRESETS[preset]


def check_inputs(request: RecipeRequest) -> Inputs:
    """The request's recipes, preset, store, model and hooks, all checked."""
    recipes = resolve_recipes(request.recipes)
    preset = resolve_preset(request.preset)
    request.tracking.check()
    workspace = Workspace(request.out)
    location = request.store
    if location is None and (workspace.store / "zarr.json").exists():
        location = str(workspace.store)  # harvested by an earlier call
    store = None
    if location is not None:
        store = ActivationStore.open(location, request.storage_options)
        if not store.complete and location != str(workspace.store):
            raise SaekitError(f"store {location} is not complete; finish its harvest first")
    model_name = request.model or (store.spec.identity.get("model") if store else None)
    if not model_name:
        raise SaekitError("give the LM with --model (the store names none)")
    model = ModelShape.read(model_name)
    _check_layer(preset, model)
    hooks = {r.name: _recipe_hooks(r, preset, model, store, location) for r in recipes}
    layer = preset.layer_for(model.n_layers)
    residual = _any_single_hook(residual_stream(layer), preset, store)
    if preset.context_size > model.n_ctx and store is None:
        raise SaekitError(
            f"preset {preset.name} uses contexts of {preset.context_size} tokens but model "
            f"{model.name} takes at most {model.n_ctx}; use a model with a longer context"
        )
    if store is None and not request.dataset:
        raise SaekitError("give --dataset to harvest from, or an existing store with --store")
    inputs = Inputs(recipes, preset, store, model, residual[0], hooks)
    warnings: list[str] = []
    if store is not None:
        check_holdout(store)
        if store.complete:
            for hook in inputs.gradient_hooks:
                store.require_gradients(hook)
        # the model the recipe splices SAEs into must be the store's, checked before training
        tokenizer = load_tokenizer(model_name, store, check=False)
        warnings = check_model_files(
            store, model_name, tokenizer, request.allow_other_model, "online metrics use"
        )
    complete = store if store is not None and store.complete else None
    return dataclasses.replace(inputs, store=complete, warnings=warnings)


def _check_layer(preset: Preset, model: ModelShape) -> None:
    if preset.layer_for(model.n_layers) >= model.n_layers:
        raise SaekitError(
            f"preset {preset.name} needs {preset.hook_for(model.n_layers)}, but model "
            f"{model.name} has only {model.n_layers} layers; use --preset small or the paper's "
            "model"
        )


def _recipe_hooks(
    recipe: Recipe,
    preset: Preset,
    model: ModelShape,
    store: ActivationStore | None,
    location: str | None,
) -> tuple[str, ...]:
    """The hooks the recipe trains on at the preset's layer, checked against a given store."""
    hooks = _any_single_hook(recipe.hooks(preset.layer_for(model.n_layers)), preset, store)
    missing = [hook for hook in hooks if store is not None and hook not in store.spec.hooks]
    if missing:
        assert store is not None
        raise SaekitError(
            f"store {location} has no hook {', '.join(missing)}, which recipe {recipe.name} "
            f"needs at preset {preset.name} (it has {', '.join(store.hooks)}); harvest "
            f"{'those hooks' if len(missing) > 1 else 'that hook'} or choose another store"
        )
    return hooks


def _any_single_hook(
    hooks: tuple[str, ...], preset: Preset, store: ActivationStore | None
) -> tuple[str, ...]:
    """At the `small` preset a one-hook recipe reads the only hook of a one-hook store."""
    if store is not None and preset.hook is None and len(hooks) == 1 and len(store.hooks) == 1:
        return (store.hooks[0],)
    return hooks


def harvest_config(request: RecipeRequest, inputs: Inputs) -> HarvestConfig:
    """The harvest that makes DIR's store at the preset's scale: every recipe's hooks, loss
    gradients at those of the recipes that read them."""
    preset = inputs.preset
    return HarvestConfig(
        model=inputs.model.name,
        dataset=request.dataset or "",
        hooks=inputs.harvested_hooks,
        gradients=inputs.gradient_hooks or False,
        out=str(Workspace(request.out).store),
        tokens=preset.harvest_tokens,
        holdout_tokens=preset.holdout_tokens,
        context_size=preset.context_size,
        batch_size=preset.harvest_batch,
        device=request.device,
        provenance={"command": request.command},
    )

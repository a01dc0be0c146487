"""What `sae recipe` was asked for, checked before anything is written: the recipes, the preset,
the store (or the harvest that makes it), the LM's shape and the hook."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saekit.base.errors import SaekitError
from saekit.cache_format import ActivationStore
from saekit.evaluate import check_holdout
from saekit.harvest import HarvestConfig
from saekit.lm import ModelShape, check_model_files, load_tokenizer
from saekit.recipes.catalog import RECIPES
from saekit.recipes.declarations import Recipe
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


@dataclass(frozen=True)
class Inputs:
    """A checked request: the store (None while it is still to be harvested), the model's shape
    and the hook."""

    recipes: list[Recipe]
    preset: Preset
    store: ActivationStore | None
    model: ModelShape
    hook: str
    warnings: list[str] = field(default_factory=list)  # what the report must say

    @property
    def d_in(self) -> int:
        return self.store.spec.hooks[self.hook].d if self.store is not None else self.model.d_model


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
    """The request's recipes, preset, store, model and hook, all checked."""
    recipes = resolve_recipes(request.recipes)
    preset = resolve_preset(request.preset)
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
    hook = _hook(preset, model, store, location)
    if preset.context_size > model.n_ctx and store is None:
        raise SaekitError(
            f"preset {preset.name} uses contexts of {preset.context_size} tokens but model "
            f"{model.name} takes at most {model.n_ctx}; use a model with a longer context"
        )
    if store is None and not request.dataset:
        raise SaekitError("give --dataset to harvest from, or an existing store with --store")
    warnings: list[str] = []
    if store is not None:
        check_holdout(store)
        if any(r.needs_gradients for r in recipes) and store.complete:
            store.require_gradients(hook)
        # the model the recipe splices SAEs into must be the store's, checked before training
        tokenizer = load_tokenizer(model_name, store, check=False)
        warnings = check_model_files(
            store, model_name, tokenizer, request.allow_other_model, "online metrics use"
        )
    complete = store if store is not None and store.complete else None
    return Inputs(recipes, preset, complete, model, hook, warnings)


def _hook(
    preset: Preset, model: ModelShape, store: ActivationStore | None, location: str | None
) -> str:
    """The preset's hook (the middle layer's residual stream for `small`), checked."""
    hook = preset.hook_for(model.n_layers)
    layer = re.match(r"blocks\.(\d+)\.", hook)
    if layer and int(layer.group(1)) >= model.n_layers:
        raise SaekitError(
            f"preset {preset.name} needs {hook}, but model {model.name} has only "
            f"{model.n_layers} layers; use --preset small or the paper's model"
        )
    if store is not None and hook not in store.spec.hooks:
        if preset.hook is None and len(store.hooks) == 1:
            return store.hooks[0]  # small preset: any single hook of a given store
        raise SaekitError(
            f"store {location} has no hook {hook}, which preset {preset.name} needs (it has "
            f"{', '.join(store.hooks)}); harvest that hook or choose another store"
        )
    return hook


def harvest_config(request: RecipeRequest, inputs: Inputs) -> HarvestConfig:
    """The harvest that makes DIR's store at the preset's scale."""
    preset = inputs.preset
    return HarvestConfig(
        model=inputs.model.name,
        dataset=request.dataset or "",
        hooks=(inputs.hook,),
        out=str(Workspace(request.out).store),
        tokens=preset.harvest_tokens,
        holdout_tokens=preset.holdout_tokens,
        context_size=preset.context_size,
        batch_size=preset.harvest_batch,
        device=request.device,
        provenance={"command": request.command},
    )

"""`sae recipe`: harvest once (or reuse a store), train each recipe's stages, evaluate, report.

    DIR/recipe.json                  what DIR holds: preset, model, store, hook, timings
    DIR/store.zarr                   the harvested store (unless --store)
    DIR/<recipe>/runs/<stage>-s<seed>/   training runs (many SAEs per data pass)
    DIR/<recipe>/evals/<run>.json    every evaluated row of that run (the cache resume reads)
    DIR/report.md, report.json, figures/

Everything a user can get wrong is checked before anything is written. Re-running resumes: a
finished run is not trained again and a cached row is not evaluated again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saekit import __version__
from saekit.base.atomic import write_json
from saekit.base.devices import resolve_device
from saekit.base.errors import SaekitError
from saekit.base.outputs import refuse_inside_store
from saekit.cache_format import ActivationStore
from saekit.evaluate import EvalSettings, Evaluation, Steering, check_holdout, targets_of
from saekit.harvest import HarvestConfig, plan_harvest, run_harvest
from saekit.lm import ModelShape, load_model_for_store
from saekit.recipes.base import AnalysisContext, Recipe, StageContext
from saekit.recipes.choice import ChoiceRecipe
from saekit.recipes.cost import Estimate, estimate
from saekit.recipes.gated import GatedRecipe
from saekit.recipes.gsae import GSAERecipe
from saekit.recipes.presets import PRESETS, Preset
from saekit.recipes.report import write_report
from saekit.recipes.results import Results, Row
from saekit.train import (
    Checkpoints,
    TrainRequest,
    TrainSettings,
    load_sae,
    parse_spec,
    saved_saes,
    train,
)
from saekit.train.trainer import Observer

RECIPES: dict[str, Recipe] = {r.name: r for r in (GSAERecipe(), ChoiceRecipe(), GatedRecipe())}
RECORD_FILE = "recipe.json"
RECORD_FORMAT = "saekit.recipe"
STORE_DIR = "store.zarr"
STEERING_SAMPLE_ROWS = 8192


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


class Reporter:
    """What the runner tells its caller (the CLI draws it; the default stays quiet)."""

    def message(self, text: str) -> None: ...

    def harvesting(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext(None)

    def training(self) -> contextlib.AbstractContextManager[Observer | None]:
        return contextlib.nullcontext(None)


@dataclass
class Outcome:
    """What a call did: runs trained, rows evaluated, the report's files, the estimate."""

    report: Path
    estimate: Estimate
    trained_runs: list[str] = field(default_factory=list)
    evaluated_rows: int = 0


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


def run_recipes(request: RecipeRequest, reporter: Reporter | None = None) -> Outcome:
    """Validate, then harvest (or open the store), train, evaluate and write the report."""
    reporter = reporter or Reporter()
    recipes = resolve_recipes(request.recipes)
    preset = resolve_preset(request.preset)
    out = request.out
    store, model, hook = _inputs(request, preset, recipes)
    record = _record(request, preset, model.name, hook)
    _check_out(out, record)
    device = resolve_device(request.device)
    d_in = store.spec.hooks[hook].d if store is not None else model.d_model
    cost = estimate(recipes, preset, d_in, model, harvesting=store is None)
    reporter.message(f"preset {preset.name}: {cost.describe()}")
    out.mkdir(parents=True, exist_ok=True)
    record = _merge_record(out, record, [r.name for r in recipes])
    write_json(out / RECORD_FILE, record)
    timings = record.setdefault("timings", {})
    if store is None:
        with _timed(timings, "harvest"):
            store = _harvest(request, preset, model, hook, out, reporter)
    evaluator = Evaluator(store, preset, device, model.name, reporter)
    outcome = Outcome(out / "report.md", cost)
    for recipe in recipes:
        recipe_timings = timings.setdefault(recipe.name, {})
        with _timed(recipe_timings, "train"):
            runs = _train(recipe, request, preset, store, hook, out, reporter, outcome)
        with _timed(recipe_timings, "evaluate"):
            for run_name, (seed, run_dir) in runs.items():
                outcome.evaluated_rows += evaluator.evaluate_run(
                    recipe, run_name, seed, run_dir, out
                )
        write_json(out / RECORD_FILE, record)
    _report(out, record, preset, d_in, cost)
    return outcome


# -- inputs and the output directory ----------------------------------------------------------


def _inputs(
    request: RecipeRequest, preset: Preset, recipes: list[Recipe]
) -> tuple[ActivationStore | None, ModelShape, str]:
    """The store (None when it is to be harvested), the LM's shape and the hook, all checked."""
    store_location = request.store
    if store_location is None and (request.out / STORE_DIR / "zarr.json").exists():
        store_location = str(request.out / STORE_DIR)  # harvested by an earlier call
    store = None
    if store_location is not None:
        store = ActivationStore.open(store_location, request.storage_options)
        if not store.complete and store_location != str(request.out / STORE_DIR):
            raise SaekitError(f"store {store_location} is not complete; finish its harvest first")
    model_name = request.model or (store.spec.identity.get("model") if store else None)
    if not model_name:
        raise SaekitError("give the LM with --model (the store names none)")
    model = ModelShape.read(model_name)
    hook = _hook(preset, model, store, store_location)
    if preset.context_size > model.n_ctx and store is None:
        raise SaekitError(
            f"preset {preset.name} uses contexts of {preset.context_size} tokens but model "
            f"{model.name} takes at most {model.n_ctx}; use a model with a longer context"
        )
    if store is None and not request.dataset:
        raise SaekitError("give --dataset to harvest from, or an existing store with --store")
    if store is not None:
        check_holdout(store)
        if any(r.needs_gradients for r in recipes) and store.complete:
            store.require_gradients(hook)
    return (store if store is not None and store.complete else None), model, hook


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


def _record(request: RecipeRequest, preset: Preset, model: str, hook: str) -> dict[str, Any]:
    """The settings that define DIR's results, as JSON values (what recipe.json holds)."""
    record = {
        "format": RECORD_FORMAT,
        "saekit_version": __version__,
        "preset": dataclasses.asdict(preset),
        "model": model,
        "dataset": request.dataset,
        "store": request.store,
        "hook": hook,
    }
    return json.loads(json.dumps(record))


COMPARED = ("preset", "model", "store", "hook")


def _check_out(out: Path, record: dict[str, Any]) -> None:
    """DIR lies in no store (links resolved) and is new, empty, or holds recipes of the same
    settings (then they are resumed)."""
    refuse_inside_store(out, "recipe")
    if out.exists() and not out.is_dir():
        raise SaekitError(f"--out {out} is a file; choose a directory")
    if not out.exists() or not any(out.iterdir()):
        return
    try:
        stored = json.loads((out / RECORD_FILE).read_text())
    except (OSError, ValueError):
        stored = None
    if not isinstance(stored, dict):
        raise SaekitError(
            f"--out {out} is not empty and holds no recipe results; choose a new directory"
        )
    changed = [key for key in COMPARED if stored.get(key) != record[key] and key != "store"]
    if stored.get("store") != record["store"] and record["store"] is not None:
        changed.append("store")
    if changed:
        raise SaekitError(
            f"--out {out} holds recipes run with another {', '.join(changed)}; repeat those "
            "settings to resume them, or choose a new directory"
        )


def _merge_record(out: Path, record: dict[str, Any], names: list[str]) -> dict[str, Any]:
    try:
        stored = json.loads((out / RECORD_FILE).read_text())
    except FileNotFoundError:
        stored = {}
    merged = {**stored, **{k: v for k, v in record.items() if v is not None or k not in stored}}
    done = {*stored.get("recipes", []), *names}
    merged["recipes"] = [name for name in RECIPES if name in done]  # in the recipes' order
    return merged


@contextlib.contextmanager
def _timed(timings: dict[str, Any], key: str) -> Iterator[None]:
    """Add the wall time of the block to `timings[key]` (seconds, summed over calls)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


# -- harvest and training -----------------------------------------------------------------------


def _harvest(
    request: RecipeRequest,
    preset: Preset,
    model: ModelShape,
    hook: str,
    out: Path,
    reporter: Reporter,
) -> ActivationStore:
    config = HarvestConfig(
        model=model.name,
        dataset=request.dataset or "",
        hooks=(hook,),
        out=str(out / STORE_DIR),
        tokens=preset.harvest_tokens,
        holdout_tokens=preset.holdout_tokens,
        context_size=preset.context_size,
        batch_size=preset.harvest_batch,
        device=request.device,
        provenance={"command": request.command},
    )
    reporter.message(f"harvesting {hook} of {model.name} into {config.out}")
    plan = plan_harvest(config)
    with reporter.harvesting() as bar:
        run_harvest(plan, bar)
    return ActivationStore.open(config.out)


def _train(
    recipe: Recipe,
    request: RecipeRequest,
    preset: Preset,
    store: ActivationStore,
    hook: str,
    out: Path,
    reporter: Reporter,
    outcome: Outcome,
) -> dict[str, tuple[int, Path]]:
    """Train every stage of the recipe, one run per seed; return run name -> (seed, dir)."""
    d_in = store.spec.hooks[hook].d
    runs: dict[str, tuple[int, Path]] = {}
    trained: dict[int, dict[str, Path]] = {seed: {} for seed in preset.seeds}
    for stage in recipe.stages(preset):
        for seed in preset.seeds if stage.seeds == "all" else preset.seeds[:1]:
            context = StageContext(preset, d_in, seed, trained[seed], store, hook)
            specs = [parse_spec(text) for text in stage.specs(context)]
            run_name = f"{stage.name}-s{seed}"
            run_dir = out / recipe.name / "runs" / run_name
            names = [spec.resolve(d_in).name for spec in specs]
            if not _complete(run_dir, names):
                reporter.message(f"{recipe.name}: training run {run_name} ({len(specs)} SAEs)")
                with reporter.training() as observer:
                    settings = TrainSettings(
                        tokens=preset.train_tokens,
                        batch_size=preset.batch_size,
                        seed=seed,
                        device=request.device,
                    )
                    request_ = TrainRequest(
                        store=store.location,
                        hook=hook,
                        out=run_dir,
                        specs=specs,
                        settings=settings,
                        resume=run_dir.exists(),
                        storage_options=request.storage_options,
                    )
                    train(request_, observer)
                outcome.trained_runs.append(f"{recipe.name}/{run_name}")
            trained[seed].update({name: run_dir / "saes" / name for name in names})
            runs[run_name] = (seed, run_dir)
    return runs


def _complete(run_dir: Path, names: list[str]) -> bool:
    """Whether the run finished and exported every SAE it should hold."""
    latest = Checkpoints(run_dir).latest()
    if latest is None or not latest["complete"]:
        return False
    saved = {p.parent.name for p in (run_dir / "saes").glob("*/cfg.json")}
    if saved != set(names):
        raise SaekitError(
            f"run {run_dir} holds other SAEs than this recipe trains; it was made by another "
            "version or preset — choose a new --out"
        )
    return True


# -- evaluation -----------------------------------------------------------------------------------


class Evaluator:
    """Evaluates the SAEs of runs on the store's held-out tokens, caching every row."""

    def __init__(
        self,
        store: ActivationStore,
        preset: Preset,
        device: torch.device,
        model: str,
        reporter: Reporter,
    ) -> None:
        self.preset, self.device, self.reporter = preset, device, reporter
        settings = EvalSettings(
            offline_tokens=None,
            online_tokens=preset.online_tokens,
            batch_size=preset.eval_batch,
            steering=Steering(
                preset.steering_latents, preset.steering_contexts, preset.steering_alphas
            ),
        )
        self.evaluation = Evaluation(
            store,
            device,
            settings,
            load_model=lambda hooks: load_model_for_store(store, hooks, device, model),
        )

    def evaluate_run(
        self, recipe: Recipe, run_name: str, seed: int, run_dir: Path, out: Path
    ) -> int:
        """Evaluate what the run's cache lacks; return the number of rows evaluated."""
        cache = out / recipe.name / "evals" / f"{run_name}.json"
        cached = json.loads(cache.read_text()) if cache.exists() else {}
        targets, steered = [], set()
        for sae_dir in saved_saes(run_dir):
            sae = load_sae(sae_dir, self.device)
            targets += targets_of(run_name, sae, diagnostic=recipe.diagnostic_modes)
            if recipe.steers(sae.cfg.variant, sae.cfg.options, self.preset, sae.d_in):
                steered.add(sae.cfg.name)
        todo = [t for t in targets if t.label not in cached]
        if not todo:
            return 0
        self.reporter.message(f"{recipe.name}: evaluating {len(todo)} rows of run {run_name}")
        for row in self.evaluation.rows(todo, steer=steered):
            cached[row["label"]] = row
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache, cached)
        return len(todo)


# -- the report -----------------------------------------------------------------------------------


def _report(out: Path, record: dict[str, Any], preset: Preset, d_in: int, cost: Estimate) -> None:
    """Analyse every recipe with results in DIR (also those of earlier calls); write the report."""
    analyses = {}
    figures_dir = out / "figures"
    figures_dir.mkdir(exist_ok=True)
    for name in record["recipes"]:
        recipe = RECIPES[name]
        rows = []
        for cache in sorted((out / name / "evals").glob("*.json")):
            rows += [Row(row) for row in json.loads(cache.read_text()).values()]
        if not rows:
            continue
        run_dirs = {p.name: p for p in sorted((out / name / "runs").iterdir())}
        context = AnalysisContext(preset, d_in, figures_dir, run_dirs)
        analyses[name] = (recipe, recipe.analyse(Results(rows), context), rows)
    write_report(out, record, analyses, cost)

"""`sae recipe`: check everything, harvest once (or reuse a store), train each recipe's stages,
evaluate every SAE, write the report. Re-running resumes: a finished run is not trained again
and a cached row is not evaluated again (see `workspace.py` for DIR's layout)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saekit.base.atomic import write_json
from saekit.base.cluster import Cluster
from saekit.base.devices import resolve_device
from saekit.base.outputs import make_directory
from saekit.cache_format import ActivationStore
from saekit.harvest import plan_harvest, run_harvest
from saekit.recipes.analysis import analyse
from saekit.recipes.catalog import RECIPES
from saekit.recipes.cost import Estimate, estimate
from saekit.recipes.declarations import Scope, View
from saekit.recipes.evals import EvalSpec, evaluate_run, evaluate_runs_on
from saekit.recipes.inputs import Inputs, RecipeRequest, check_inputs, harvest_config
from saekit.recipes.report import write_report
from saekit.recipes.results import Row
from saekit.recipes.training import train_recipe
from saekit.recipes.workspace import (
    Workspace,
    check_workspace,
    new_record,
    open_record,
    timed,
)
from saekit.train import TRAIN_RESOURCE, Observer


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


def run_recipes(request: RecipeRequest, reporter: Reporter | None = None) -> Outcome:
    """Validate, then harvest (or open the store), train, evaluate and write the report."""
    reporter = reporter or Reporter()
    inputs = check_inputs(request)
    cluster = Cluster(request.cluster, TRAIN_RESOURCE) if request.cluster else None
    workspace = Workspace(request.out)
    preset, recipes = inputs.preset, inputs.recipes
    record = new_record(
        preset, recipes, inputs.model.name, request.dataset, request.store, inputs.hook
    )
    check_workspace(workspace.root, record)
    device = resolve_device(request.device)
    scopes = {recipe.name: inputs.scope(recipe) for recipe in recipes}
    cost = estimate(
        [(recipe, scopes[recipe.name]) for recipe in recipes],
        inputs.model,
        harvesting=inputs.store is None,
    )
    reporter.message(f"preset {preset.name}: {cost.describe()}")
    record = open_record(workspace, record, list(RECIPES))
    for name in record["recipes"]:  # also those of earlier calls, for the report
        scopes.setdefault(name, inputs.scope(RECIPES[name]))
    timings = record.setdefault("timings", {})
    store = inputs.store
    if store is None:
        with timed(timings, "harvest"):
            store = _harvest(request, inputs, reporter)
    spec = EvalSpec.of(
        store,
        request.storage_options,
        preset,
        request.device,
        inputs.model.name,
        request.allow_other_model,
    )
    evaluation = spec.build(device, store)
    outcome = Outcome(workspace.root / "report.md", cost)
    with cluster or contextlib.nullcontext():
        for recipe in recipes:
            scope = scopes[recipe.name]
            recipe_timings = timings.setdefault(recipe.name, {})
            with timed(recipe_timings, "train"):
                runs, trained = train_recipe(
                    recipe, scope, store, workspace, request.device,
                    reporter.training, reporter.message, request.storage_options,
                    request.tracking, cluster, inputs.model.name,
                )  # fmt: skip
            outcome.trained_runs += trained
            with timed(recipe_timings, "evaluate"):
                if cluster is not None:
                    outcome.evaluated_rows += evaluate_runs_on(
                        cluster, spec, recipe, scope, runs, workspace, reporter.message, store
                    )
                else:
                    for run in runs:
                        outcome.evaluated_rows += evaluate_run(
                            evaluation, recipe, scope, run, workspace, reporter.message
                        )
            write_json(workspace.record_file, record)
    _report(workspace, record, scopes, cost, inputs.warnings)
    return outcome


def _harvest(request: RecipeRequest, inputs: Inputs, reporter: Reporter) -> ActivationStore:
    config = harvest_config(request, inputs)
    hooks = ", ".join(config.hooks)
    reporter.message(f"harvesting {hooks} of {inputs.model.name} into {config.out}")
    plan = plan_harvest(config)
    with reporter.harvesting() as bar:
        run_harvest(plan, bar)
    return ActivationStore.open(config.out)


def _report(
    workspace: Workspace,
    record: dict[str, Any],
    scopes: dict[str, Scope],
    cost: Estimate,
    warnings: list[str],
) -> None:
    """Analyse every recipe with results in DIR (also those of earlier calls); write the report."""
    make_directory(workspace.figures, workspace.root)
    analyses = []
    for name in record["recipes"]:
        rows = [Row(row) for row in workspace.cached_rows(name)]
        if not rows:
            continue
        recipe = RECIPES[name]
        view = View(scopes[name], workspace.figures, workspace.runs(name))
        analyses.append(analyse(recipe, rows, view))
    write_report(workspace.root, record, analyses, cost, warnings)

"""A recipe's SAEs evaluated through the one evaluation path (`saekit.evaluate.Evaluation`),
every row cached per run so that a resumed recipe evaluates only what it lacks.

Each SAE's rows depend on that SAE alone (every target reads the same held-out rows and
contexts), so on a cluster the SAEs are evaluated in parallel, one task per SAE; each worker
keeps one evaluation (its held-out contexts, training means and LM) for all its tasks."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saekit.base.atomic import write_json
from saekit.base.cluster import Cluster, on_worker, run_tasks
from saekit.base.locations import absolute_location
from saekit.base.outputs import make_directory
from saekit.cache_format import ActivationStore
from saekit.cache_format.locking import new_owner
from saekit.evaluate import EvalSettings, Evaluation, Steering, check_provenance, targets_of
from saekit.lm import load_model_for_store
from saekit.recipes.declarations import Recipe, Scope
from saekit.recipes.presets import Preset
from saekit.recipes.training import TrainedRun
from saekit.recipes.workspace import Workspace
from saekit.train import TRAIN_RESOURCE, load_sae, saved_saes


@dataclass(frozen=True)
class EvalSpec:
    """The evaluation every recipe of a call shares, as any process rebuilds it: all held-out
    rows offline, the preset's held-out tokens spliced into the LM (checked against the store,
    loaded when first needed), on `device` (as asked: each worker resolves it to its own)."""

    store: str
    storage_options: str  # JSON: the spec stays hashable, so a worker keeps one evaluation
    online_tokens: int
    eval_batch: int
    device: str
    model: str
    allow_other_model: bool = False  # a model that is not the store's (the report says so)

    @classmethod
    def of(
        cls,
        store: ActivationStore,
        storage_options: dict[str, Any] | None,
        preset: Preset,
        device: str,
        model: str,
        allow_other_model: bool = False,
    ) -> EvalSpec:
        options = json.dumps(storage_options)
        location = absolute_location(store.location)  # as every worker finds it
        return cls(
            location,
            options,
            preset.online_tokens,
            preset.eval_batch,
            device,
            model,
            allow_other_model,
        )

    def build(self, device: torch.device, store: ActivationStore | None = None) -> Evaluation:
        """The evaluation on `device` (the store opened again unless given)."""
        store = store or ActivationStore.open(self.store, json.loads(self.storage_options))
        settings = EvalSettings(
            offline_tokens=None, online_tokens=self.online_tokens, batch_size=self.eval_batch
        )
        return Evaluation(
            store,
            device,
            settings,
            load_model=lambda hooks: load_model_for_store(
                store, hooks, device, self.model, self.allow_other_model
            ),
        )


@dataclass(frozen=True)
class SAEJob:
    """One SAE of a run whose rows a cache lacks: its labels, and how it is steered (None:
    not)."""

    run: str
    sae_dir: Path
    diagnostic: bool
    labels: tuple[str, ...]
    steering: Steering | None


def pending(
    recipe: Recipe, scope: Scope, run: TrainedRun, workspace: Workspace, store: ActivationStore
) -> list[SAEJob]:
    """The run's SAEs with rows its cache lacks (each in its modes, the recipe's diagnostic ones
    too; steered when the recipe steers it, at the preset's training length), in the order of
    the run's SAEs. Every SAE is checked against the store first (`check_provenance`)."""
    cache = workspace.evals(recipe.name, run.name)
    cached = workspace.read_cache(cache)
    steering = Steering(
        scope.preset.steering_latents, scope.preset.steering_contexts, recipe.steering_alphas(scope)
    )
    jobs = []
    for sae_dir in saved_saes(run.directory):
        sae = load_sae(sae_dir)
        check_provenance(sae, store, sae_dir)  # trained on this store: a safeguard
        labels = tuple(
            target.label
            for target in targets_of(run.name, sae, diagnostic=recipe.diagnostic_modes)
            if target.label not in cached
        )
        cfg = sae.cfg
        steered = run.length == 1 and recipe.steers(scope, cfg.variant, cfg.options, cfg.finetuned)
        if labels:
            jobs.append(
                SAEJob(
                    run.name,
                    sae_dir,
                    recipe.diagnostic_modes,
                    labels,
                    steering if steered else None,
                )
            )
    return jobs


def evaluate_job(evaluation: Evaluation, job: SAEJob) -> list[dict[str, Any]]:
    """The job's rows, measured by `evaluation`."""
    sae = load_sae(job.sae_dir, evaluation.device)
    targets = [t for t in targets_of(job.run, sae, job.diagnostic) if t.label in job.labels]
    steered = {sae.cfg.name} if job.steering is not None else set()
    return evaluation.rows(targets, steer=steered, steering=job.steering)


def evaluate_run(
    evaluation: Evaluation,
    recipe: Recipe,
    scope: Scope,
    run: TrainedRun,
    workspace: Workspace,
    message: Callable[[str], None],
) -> int:
    """Evaluate what the run's cache lacks here; return the number of rows evaluated."""
    jobs = pending(recipe, scope, run, workspace, evaluation.store)
    if not jobs:
        return 0
    count = sum(len(job.labels) for job in jobs)
    message(f"{recipe.name}: evaluating {count} rows of run {run.name}")
    rows = [row for job in jobs for row in evaluate_job(evaluation, job)]
    _cache(workspace, recipe, run, rows)
    return count


def evaluate_runs_on(
    cluster: Cluster,
    spec: EvalSpec,
    recipe: Recipe,
    scope: Scope,
    runs: list[TrainedRun],
    workspace: Workspace,
    message: Callable[[str], None],
    store: ActivationStore,
) -> int:
    """Evaluate what the runs' caches lack on the cluster, one task per SAE; return the number
    of rows evaluated."""
    jobs = [job for run in runs for job in pending(recipe, scope, run, workspace, store)]
    if not jobs:
        return 0
    count = sum(len(job.labels) for job in jobs)
    message(f"{recipe.name}: evaluating {count} rows of {len(jobs)} SAEs on the cluster")
    tasks = [(spec, job) for job in jobs]
    results = run_tasks(cluster, _evaluate_on_worker, tasks, "eval", new_owner())
    for run in runs:
        done = [got for job, got in zip(jobs, results, strict=True) if job.run == run.name]
        if done:
            _cache(workspace, recipe, run, [row for rows in done for row in rows])
    return count


def _evaluate_on_worker(task: tuple[EvalSpec, SAEJob]) -> list[dict[str, Any]]:
    """A dask task: one SAE's rows, on this worker's own device."""
    spec, job = task
    device = on_worker(spec.device, TRAIN_RESOURCE).device
    return evaluate_job(_worker_evaluation(spec, device), job)


@functools.cache
def _worker_evaluation(spec: EvalSpec, device: torch.device) -> Evaluation:
    """The one evaluation a worker keeps for every task of a spec."""
    return spec.build(device)


def _cache(
    workspace: Workspace, recipe: Recipe, run: TrainedRun, rows: list[dict[str, Any]]
) -> None:
    """Add rows to the run's cache, in the order given."""
    cache = workspace.evals(recipe.name, run.name)
    cached = workspace.read_cache(cache)
    for row in rows:
        cached[row["label"]] = row
    make_directory(cache.parent, workspace.root)  # never through a link planted in DIR
    write_json(cache, cached)

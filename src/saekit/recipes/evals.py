"""A recipe's SAEs evaluated through the one evaluation path (`saekit.evaluate.Evaluation`),
every row cached per run so that a resumed recipe evaluates only what it lacks."""

from __future__ import annotations

from collections.abc import Callable

import torch

from saekit.base.atomic import write_json
from saekit.base.outputs import make_directory
from saekit.cache_format import ActivationStore
from saekit.evaluate import EvalSettings, Evaluation, Steering, check_provenance, targets_of
from saekit.lm import load_model_for_store
from saekit.recipes.declarations import Recipe, Scope
from saekit.recipes.presets import Preset
from saekit.recipes.training import TrainedRun
from saekit.recipes.workspace import Workspace
from saekit.train import load_sae, saved_saes


def recipe_evaluation(
    store: ActivationStore,
    preset: Preset,
    device: torch.device,
    model: str,
    allow_other_model: bool = False,
) -> Evaluation:
    """The evaluation every recipe of a call shares: all held-out rows offline, the preset's
    held-out tokens spliced into the LM (checked against the store, loaded when first needed;
    another model than the store's only with `allow_other_model`)."""
    settings = EvalSettings(
        offline_tokens=None, online_tokens=preset.online_tokens, batch_size=preset.eval_batch
    )
    return Evaluation(
        store,
        device,
        settings,
        load_model=lambda hooks: load_model_for_store(
            store, hooks, device, model, allow_other_model
        ),
    )


def evaluate_run(
    evaluation: Evaluation,
    recipe: Recipe,
    scope: Scope,
    run: TrainedRun,
    workspace: Workspace,
    message: Callable[[str], None],
) -> int:
    """Evaluate what the run's cache lacks, each SAE in its modes (the recipe's diagnostic ones
    too), steering the SAEs the recipe steers (at the preset's training length); return the
    number of rows evaluated."""
    cache = workspace.evals(recipe.name, run.name)
    cached = workspace.read_cache(cache)
    targets, steered = [], set()
    for sae_dir in saved_saes(run.directory):
        sae = load_sae(sae_dir, evaluation.device)
        check_provenance(sae, evaluation.store, sae_dir)  # trained on this store: a safeguard
        targets += targets_of(run.name, sae, diagnostic=recipe.diagnostic_modes)
        if run.length == 1 and recipe.steers(scope, sae.cfg.variant, sae.cfg.options):
            steered.add(sae.cfg.name)
    todo = [t for t in targets if t.label not in cached]
    if not todo:
        return 0
    message(f"{recipe.name}: evaluating {len(todo)} rows of run {run.name}")
    steering = Steering(
        scope.preset.steering_latents, scope.preset.steering_contexts, recipe.steering_alphas(scope)
    )
    for row in evaluation.rows(todo, steer=steered, steering=steering):
        cached[row["label"]] = row
    make_directory(cache.parent, workspace.root)  # never through a link planted in DIR
    write_json(cache, cached)
    return len(todo)

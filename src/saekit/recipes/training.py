"""A recipe's sweep trained: one `sae train` run per stage and seed, many SAEs per data pass,
then the fine-tunes the stage declares (`sae finetune` on the run: new SAEs of it). A run that
finished is not trained again, nor a fine-tune whose SAEs are saved; one that was cut short is
resumed."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saekit.base.cluster import Cluster
from saekit.base.errors import SaekitError
from saekit.base.outputs import make_directory
from saekit.base.tracking import Tracking
from saekit.cache_format import ActivationStore
from saekit.finetune import FinetuneRequest, finetune
from saekit.recipes.declarations import Recipe, Scope, Stage, StageInputs
from saekit.recipes.workspace import Workspace
from saekit.train import (
    CFG_FILE,
    Observer,
    TrainRequest,
    TrainSettings,
    parse_spec,
    run_finished,
    sae_directory,
    train,
    trained_saes,
)


@dataclass(frozen=True)
class TrainedRun:
    """One run of a recipe: its seed, directory and training length (in multiples of the
    preset's tokens)."""

    name: str
    seed: int
    directory: Path
    length: float = 1.0


def train_recipe(
    recipe: Recipe,
    scope: Scope,
    store: ActivationStore,
    workspace: Workspace,
    device: str,
    observe: Callable[[], contextlib.AbstractContextManager[Observer | None]],
    message: Callable[[str], None],
    storage_options: dict[str, Any] | None = None,
    tracking: Tracking | None = None,
    cluster: Cluster | None = None,
    model: str | None = None,
) -> tuple[list[TrainedRun], list[str]]:
    """Train every stage of the recipe, one run per seed (on `cluster`, each run's SAEs in
    groups over its workers), and fine-tune what the stage declares (against `model`, default
    the store's); return its runs and the names of the runs this call trained or fine-tuned.
    Tracked runs are named `<recipe>/<stage>-s<seed>`, grouped by recipe."""
    preset, runs, trained_now = scope.preset, [], []
    trained: dict[int, dict[str, Path]] = {seed: {} for seed in preset.seeds}
    for stage in recipe.training_stages(scope):
        for seed in stage.seeds(preset):
            inputs = StageInputs(scope, seed, trained[seed], store)
            specs = [parse_spec(text) for text in stage.specs(inputs)]
            run_name = f"{stage.name}-s{seed}"
            run_dir = workspace.run(recipe.name, run_name)
            names = [spec.resolve(scope.d_in).name for spec in specs]
            if not _complete(run_dir, names):
                message(f"{recipe.name}: training run {run_name} ({len(specs)} SAEs)")
                make_directory(run_dir.parent, workspace.root)  # never through a link in DIR
                settings = TrainSettings(
                    tokens=round(preset.train_tokens * stage.length),
                    batch_size=preset.batch_size,
                    seed=seed,
                    device=device,
                )
                request = TrainRequest(
                    store=store.location,
                    hook=scope.hook,
                    out=run_dir,
                    specs=specs,
                    settings=settings,
                    resume=run_dir.exists(),
                    storage_options=storage_options,
                    tracking=tracking or Tracking(),
                    tracking_name=f"{recipe.name}/{run_name}",
                    tracking_group=recipe.name,
                )
                with observe() as observer:
                    train(request, observer, cluster)
                trained_now.append(f"{recipe.name}/{run_name}")
            trained[seed].update({name: sae_directory(run_dir, name) for name in names})
            tuned = _finetune(
                stage, inputs, run_dir, store, device, model, storage_options,
                lambda what: message(f"{recipe.name}: fine-tuning {what}"),
            )  # fmt: skip
            trained_now += [f"{recipe.name}/{run_name}/{suffix}" for suffix in tuned]
            runs.append(TrainedRun(run_name, seed, run_dir, stage.length))
    return runs, trained_now


def _finetune(
    stage: Stage,
    inputs: StageInputs,
    run_dir: Path,
    store: ActivationStore,
    device: str,
    model: str | None,
    storage_options: dict[str, Any] | None,
    message: Callable[[str], None],
) -> list[str]:
    """Run the stage's declared fine-tunes on its run whose SAEs are not all saved yet (a cut
    one continues from its checkpoint); return the name suffixes of those run."""
    preset, done = inputs.scope.preset, []
    context_size = int(store.spec.identity.get("context_size") or preset.context_size)
    for declared, texts in stage.finetunes(inputs):
        names = [parse_spec(text).resolve(inputs.scope.d_in).name for text in texts]
        tokens = declared.tokens(round(preset.train_tokens * stage.length), context_size)
        request = FinetuneRequest(
            run=str(run_dir),
            tokens=tokens,
            saes=tuple(names),
            model=model,
            store=store.location,
            batch_size=declared.contexts,
            device=device,
            seed=inputs.seed,
            storage_options=storage_options,
        )
        made = [sae_directory(run_dir, f"{name}-{request.name_suffix}") for name in names]
        if all((directory / CFG_FILE).exists() for directory in made):
            continue
        message(f"{len(names)} SAEs of run {run_dir.name} on {tokens:,} tokens")
        finetune(request)
        done.append(request.name_suffix)
    return done


def _complete(run_dir: Path, names: list[str]) -> bool:
    """Whether the run finished and exported every SAE it should hold (SAEs fine-tuned from
    them later, `sae finetune`, are not the run's own)."""
    if not run_finished(run_dir):
        return False
    if {p.name for p in trained_saes(run_dir)} != set(names):
        raise SaekitError(
            f"run {run_dir} holds other SAEs than this recipe trains; it was made by another "
            "version or preset — choose a new --out"
        )
    return True

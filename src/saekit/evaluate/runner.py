"""`sae eval`: offline metrics, online splicing, optional steering, and the report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import torch

from saekit import __version__
from saekit.cache_format import ActivationStore
from saekit.cache_format.location import is_local, local_path
from saekit.errors import SaekitError
from saekit.evaluate.heldout import (
    check_holdout,
    heldout_contexts,
    heldout_row_slots,
    holdout_batches,
    training_mean,
)
from saekit.evaluate.offline import offline_metrics
from saekit.evaluate.online import online_metrics
from saekit.evaluate.report import write_report
from saekit.evaluate.steering import steering_metrics
from saekit.evaluate.targets import Target, load_targets
from saekit.harvest.model import LoadedModel, check_hooks, hook_widths, load_model, resolve_device

STEERING_CONTEXTS = 32
STEERING_SAMPLE_ROWS = 8192


@dataclass(frozen=True)
class EvalRequest:
    """Everything `sae eval` takes."""

    runs: tuple[str, ...]
    out: str
    store: str | None = None  # default: the store the SAEs were trained on
    storage_options: dict[str, Any] | None = None
    online: bool = True
    tokens: int | None = None  # held-out tokens to use (default: all)
    model: str | None = None  # default: the model named in the store
    device: str = "auto"
    batch_size: int = 8  # contexts per LM forward pass
    steering: bool = False
    steering_latents: int = 64
    seed: int = 0


class Progress(Protocol):
    def stage(self, description: str, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...


def _check_runs_and_out(request: EvalRequest) -> None:
    out = Path(request.out).resolve()
    for run in request.runs:
        run_path = Path(run)
        if not run_path.is_dir():
            raise SaekitError(
                f"run {run} is not a directory; give directories written by sae train"
            )
        if out == run_path.resolve() or run_path.resolve() in out.parents:
            raise SaekitError(
                f"--out {request.out} is inside run {run}; eval never writes into "
                "a run, choose another directory"
            )
    if request.store and is_local(request.store):
        store_path = local_path(request.store).resolve()
        if out == store_path or store_path in out.parents:
            raise SaekitError(f"--out {request.out} is inside the store; choose another directory")
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / "report.json").exists())
    ):
        raise SaekitError(
            f"--out {request.out} exists and is not an eval report; choose a new directory"
        )
    if request.tokens is not None and request.tokens <= 0:
        raise SaekitError(f"--tokens must be positive, not {request.tokens}")


def _store_location(request: EvalRequest) -> str:
    if request.store:
        return request.store
    for run in request.runs:
        for cfg_file in sorted(Path(run).glob("saes/*/cfg.json")):
            return json.loads(cfg_file.read_text())["store"]["location"]
    raise SaekitError(
        f"{request.runs[0]} holds no trained SAEs (no saes/<name>/cfg.json); give "
        "a directory written by sae train"
    )


def _load_lm(
    request: EvalRequest, store: ActivationStore, targets: list[Target], device: torch.device
) -> LoadedModel:
    name = request.model or store.spec.identity.get("model")
    if not name:
        raise SaekitError(f"store {store.location} names no model; give one with --model")
    try:
        model = load_model(name, device)
    except SaekitError as error:
        raise SaekitError(
            f"{error} (the store names this model; override it with --model)"
        ) from None
    hooks = sorted({t.hook for t in targets})
    check_hooks(model, hooks)
    for hook, width in hook_widths(model, hooks).items():
        if width != store.spec.hooks[hook].d:
            raise SaekitError(
                f"model {name} gives d={width} at {hook} but the store has "
                f"d={store.spec.hooks[hook].d}; give the store's model with --model"
            )
    return model


def evaluate(request: EvalRequest, progress: Progress | None = None) -> dict[str, Path]:
    """Evaluate every SAE of the runs; write the report into `request.out`; return its files."""
    _check_runs_and_out(request)
    store = ActivationStore.open(_store_location(request), request.storage_options)
    check_holdout(store)
    device = resolve_device(request.device)
    targets = load_targets(list(request.runs), store, device)
    model = _load_lm(request, store, targets, device) if request.online else None
    hooks = sorted({t.hook for t in targets})
    means = {hook: training_mean(store, hook).to(device) for hook in hooks}
    if progress:
        progress.stage("offline metrics", None)
    offline = offline_metrics(store, targets, means, request.tokens, device)
    online: dict[str, dict] = {}
    steering: dict[str, dict | None] = {}
    contexts = None
    if model is not None:
        contexts = heldout_contexts(store, request.tokens)
        if progress:
            progress.stage("splicing SAEs into the LM", len(contexts))
        online = online_metrics(
            model.bridge,
            contexts,
            targets,
            means,
            request.batch_size,
            device,
            on_batch=progress.advance if progress else lambda n: None,
            row_slots=heldout_row_slots(store, request.tokens),
        )
        if request.steering:
            steering = _steering(request, store, model, targets, contexts)
    model_name = model.name if model is not None else None
    report = _report(request, store, targets, offline, online, steering, model_name, contexts)
    return write_report(report, Path(request.out))


def _steering(
    request: EvalRequest,
    store: ActivationStore,
    model: LoadedModel,
    targets: list[Target],
    contexts: torch.Tensor,
) -> dict[str, dict | None]:
    generator = torch.Generator().manual_seed(request.seed)
    picked = contexts[torch.randperm(len(contexts), generator=generator)[:STEERING_CONTEXTS]]
    results: dict[str, dict | None] = {}
    for target in targets:
        if target.name in results:
            continue  # decoder directions do not depend on the mode
        sample = next(
            holdout_batches(
                store, target.hook, ("activations",), STEERING_SAMPLE_ROWS, STEERING_SAMPLE_ROWS
            )
        )
        results[target.name] = steering_metrics(
            model.bridge,
            target.sae,
            sample["activations"],
            picked,
            request.steering_latents,
            request.seed,
        )
    return results


def _report(
    request: EvalRequest,
    store: ActivationStore,
    targets: list[Target],
    offline: dict,
    online: dict,
    steering: dict,
    model_name: str | None,
    contexts: torch.Tensor | None,
) -> dict:
    online_tokens = next(iter(online.values()))["tokens"] if online else 0
    return {
        "saekit_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "store": {
            "location": store.location,
            "identity": store.spec.identity,
            "holdout_rows": store.n_rows("holdout"),
            "rows": store.n_rows_committed,
        },
        "model": model_name,
        "tokens": {
            "offline": next(iter(offline.values()))["tokens"] if offline else 0,
            "online": online_tokens,
            "online_contexts": 0 if contexts is None else len(contexts),
        },
        "runs": [str(Path(run).resolve()) for run in request.runs],
        "rows": [
            {
                "run": target.run,
                "name": target.name,
                "label": target.label,
                "variant": target.variant,
                "mode": target.mode,
                "hook": target.hook,
                "d_sae": target.sae.d_sae,
                "k": target.sae.cfg.k,
                "options": target.sae.cfg.options,
                "training": target.sae.cfg.training,
                "offline": offline[target.label],
                "online": online.get(target.label),
                "steering": steering.get(target.name)
                if target.mode in ("inference", "threshold", "grad")
                else None,
            }
            for target in targets
        ],
    }

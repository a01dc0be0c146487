"""`sae eval`: offline metrics, online splicing, optional steering, and the report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from saekit.cache_format import ActivationStore
from saekit.cache_format.nonfinite import NonFinitePolicy, named_rows
from saekit.devices import resolve_device
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
from saekit.evaluate.output_dir import check_output_dir
from saekit.evaluate.provenance import recorded_model, recorded_store, report_provenance
from saekit.evaluate.report import write_report
from saekit.evaluate.steering import steering_metrics
from saekit.evaluate.targets import Target, load_targets
from saekit.harvest.model import LoadedModel, check_hooks, hook_widths, load_model

STEERING_CONTEXTS = 32
STEERING_SAMPLE_ROWS = 8192
# what identifies the LM in a store's identity, compared with the model eval loads
PROVENANCE_KEYS = ("weights_fingerprint", "tokenizer_fingerprint")


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
    skip_nonfinite: bool = False  # leave rows with NaN or Inf out (counted) instead of stopping
    allow_other_model: bool = False  # evaluate online with a model whose fingerprints differ


class Progress(Protocol):
    def stage(self, description: str, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...


def _check_runs_and_out(request: EvalRequest) -> None:
    for run in request.runs:
        if not Path(run).is_dir():
            raise SaekitError(
                f"run {run} is not a directory; give directories written by sae train"
            )
    check_output_dir(
        request.out,
        [Path(run) for run in request.runs],
        "eval",
        "an eval report",
        lambda out: (out / "report.json").exists(),
    )
    if request.tokens is not None and request.tokens <= 0:
        raise SaekitError(f"--tokens must be positive, not {request.tokens}")
    if request.batch_size <= 0:
        raise SaekitError(f"--batch-size must be positive, not {request.batch_size}")


def _store_location(request: EvalRequest) -> str:
    if request.store:
        return request.store
    for run in request.runs:
        for cfg_file in sorted(Path(run).glob("saes/*/cfg.json")):
            return recorded_store(cfg_file, Path(run))
    raise SaekitError(
        f"{request.runs[0]} holds no trained SAEs (no saes/<name>/cfg.json); give "
        "a directory written by sae train"
    )


def _load_lm(
    request: EvalRequest, store: ActivationStore, targets: list[Target], device: torch.device
) -> tuple[LoadedModel, list[str]]:
    """The LM to splice into, checked against the store: its hooks and widths always, its
    weights and tokenizer fingerprints unless `allow_other_model` (then a report warning)."""
    name = request.model or recorded_model(store)
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
    differences = _provenance_differences(store, model)
    if differences and not request.allow_other_model:
        raise SaekitError(
            f"model {name} is not the model store {store.location} was harvested with: "
            f"{'; '.join(differences)}; give that model with --model, or pass "
            "--allow-other-model to evaluate with this one (the report then says so)"
        )
    warnings = [
        f"online metrics use model {name}, which differs from the store's: "
        f"{'; '.join(differences)} (--allow-other-model)"
    ]
    return model, warnings if differences else []


def _provenance_differences(store: ActivationStore, model: LoadedModel) -> list[str]:
    """How the loaded model differs from the one the store recorded (where both are known)."""
    recorded, loaded = store.spec.identity, model.identity
    return [
        f"{key} (store: {recorded[key]}, model: {loaded[key]})"
        for key in PROVENANCE_KEYS
        if recorded.get(key) and loaded.get(key) and recorded[key] != loaded[key]
    ]


def _check_token_ids(contexts: torch.Tensor, model: LoadedModel, store: ActivationStore) -> None:
    vocabulary = int(model.bridge.cfg.d_vocab)
    if len(contexts) and int(contexts.max()) >= vocabulary:
        raise SaekitError(
            f"store {store.location} holds token ids up to {int(contexts.max())} but model "
            f"{model.name} has a vocabulary of {vocabulary}; give the store's model with --model"
        )


def evaluate(request: EvalRequest, progress: Progress | None = None) -> dict[str, Path]:
    """Evaluate every SAE of the runs; write the report into `request.out`; return its files."""
    _check_runs_and_out(request)
    store = ActivationStore.open(_store_location(request), request.storage_options)
    check_holdout(store)
    device = resolve_device(request.device)
    targets = load_targets(list(request.runs), store, device)
    model, warnings = _load_lm(request, store, targets, device) if request.online else (None, [])
    hooks = sorted({t.hook for t in targets})
    policy = NonFinitePolicy(skip=request.skip_nonfinite)
    means = {hook: training_mean(store, hook, policy).to(device) for hook in hooks}
    if progress:
        progress.stage("offline metrics", None)
    offline = offline_metrics(store, targets, means, request.tokens, device, policy)
    online: dict[str, dict] = {}
    steering: dict[str, dict | None] = {}
    contexts = None
    if model is not None:
        contexts = heldout_contexts(store, request.tokens)
        _check_token_ids(contexts, model, store)
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
            steering = _steering(request, store, model, targets, contexts, policy)
    model_name = model.name if model is not None else None
    report = _report(request, store, targets, offline, online, steering, model_name, contexts)
    report["store"]["nonfinite_rows_skipped"] = len(policy.rows)
    report["warnings"] = warnings + _nonfinite_warnings(policy)
    return write_report(report, Path(request.out))


def _steering(
    request: EvalRequest,
    store: ActivationStore,
    model: LoadedModel,
    targets: list[Target],
    contexts: torch.Tensor,
    policy: NonFinitePolicy,
) -> dict[str, dict | None]:
    generator = torch.Generator().manual_seed(request.seed)
    picked = contexts[torch.randperm(len(contexts), generator=generator)[:STEERING_CONTEXTS]]
    results: dict[str, dict | None] = {}
    for target in targets:
        if target.name in results:
            continue  # decoder directions do not depend on the mode
        sample = next(
            holdout_batches(
                store,
                target.hook,
                ("activations",),
                STEERING_SAMPLE_ROWS,
                STEERING_SAMPLE_ROWS,
                policy,
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


def _nonfinite_warnings(policy: NonFinitePolicy) -> list[str]:
    """What a reader of the report must know about rows left out of its numbers."""
    if not policy.rows:
        return []
    return [
        f"{len(policy.rows)} store rows holding NaN or Inf were left out (--skip-nonfinite): "
        f"rows {named_rows(sorted(policy.rows))}"
    ]


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
        **report_provenance(store),
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

"""`sae eval`: offline metrics, online splicing, optional steering, and the report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saekit.base.devices import resolve_device
from saekit.base.errors import SaekitError
from saekit.base.outputs import check_output_dir
from saekit.cache_format import ActivationStore
from saekit.cache_format.nonfinite import NonFinitePolicy
from saekit.evaluate.evaluation import EvalSettings, Evaluation, Progress, Steering
from saekit.evaluate.report import report_head, write_report
from saekit.evaluate.targets import load_targets
from saekit.lm import load_model_for_store
from saekit.train import recorded_store, sae_directories

STEERING_CONTEXTS = 32


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

    def settings(self) -> EvalSettings:
        steering = Steering(self.steering_latents, STEERING_CONTEXTS) if self.steering else None
        return EvalSettings(self.tokens, self.tokens, self.batch_size, self.seed, steering)


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
    return recorded_store(sae_directories(request.runs[0])[0])


def evaluate(request: EvalRequest, progress: Progress | None = None) -> dict[str, Path]:
    """Evaluate every SAE of the runs on the store's held-out tokens; write the report into
    `request.out`; return its files."""
    _check_runs_and_out(request)
    store = ActivationStore.open(_store_location(request), request.storage_options)
    device = resolve_device(request.device)

    def load_model(hooks: list[str]):
        return load_model_for_store(store, hooks, device, request.model, request.allow_other_model)

    policy = NonFinitePolicy(skip=request.skip_nonfinite)
    evaluation = Evaluation(
        store,
        device,
        request.settings(),
        policy,
        load_model if request.online else None,
        progress,
    )
    targets = load_targets(list(request.runs), store, device)
    if evaluation.online:  # a model that does not fit is refused before any long pass
        evaluation.model(sorted({h for t in targets for h in t.shape.hooks}))
    rows = evaluation.rows(targets, steer={t.name for t in targets})
    online = [row["online"] for row in rows if row["online"]]
    report = {
        **report_head(store),
        "model": evaluation.model_name,
        "tokens": {
            "offline": rows[0]["offline"]["tokens"] if rows else 0,
            "online": online[0]["tokens"] if online else 0,
            "online_contexts": len(evaluation.contexts) if evaluation.online else 0,
        },
        "runs": [str(Path(run).resolve()) for run in request.runs],
        "rows": rows,
        "warnings": evaluation.warnings(),
    }
    report["store"]["nonfinite_rows_skipped"] = len(policy.rows)
    return write_report(report, Path(request.out))

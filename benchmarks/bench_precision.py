"""What float8 stores cost: stored-value errors, and SAE quality against float16 stores.

Run:  .venv/bin/python benchmarks/bench_precision.py [--seeds 3] [--dir /tmp/saekit-precision]

The demo's tiny GPT-2 (trained briefly on the generated corpus, d = 64) is harvested three times
over the same 61,440 tokens, with float32, float16 and float8 storage. Printed side by side:
- the error of the stored values against the float32 store, for activations and gradients:
  per-element relative error (median, 99th percentile, over elements at least 1e-3 of their
  row's largest magnitude), per-row relative error (median, max), and non-zero elements that
  became zero;
- bytes per row of each store;
- TopK and g-SAE (default and augmented values; k = 8, 256 latents, ~3 epochs as in the demo)
  trained on the float16 and the float8 store with `--seeds` seeds each, and every one evaluated
  the same way, on the float32 store's held-out rows: NMSE, loss added when spliced into the
  LM, and dead latents. The noise is the spread between seeds on one store (standard
  deviation); the float8 − float16 difference of the means is compared to it.
The work directory is kept (delete it to start again); stores, runs and reports are reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import torch

from saekit.cache_format import ActivationStore
from saekit.demo.pipeline import DEMO_HOOK, DemoPaths, harvest_config, prepare_model_and_corpus
from saekit.evaluate import EvalRequest, evaluate
from saekit.harvest import harvest
from saekit.train import TrainRequest, TrainSettings, parse_spec, train

DTYPES = ("float16", "float8")
SAES = {
    "topk": "topk:k=8,latents=256",
    "gsae": "gsae:k=8,latents=256",  # the default: β_eff 1, selection-only values
    "gsae-augmented": "gsae:k=8,latents=256,beta_eff=0.3,selection_only=false",
}
METRICS = {  # label -> (report section, key)
    "NMSE": ("offline", "nmse"),
    "loss added (nats)": ("online", "loss_added"),
    "dead latents": ("offline", "dead_fraction"),
}


def harvest_stores(paths: DemoPaths) -> dict[str, Path]:
    """The same tokens harvested as float32, float16 and float8 stores (reused when present)."""
    stores = {}
    for dtype in ("float32", *DTYPES):
        stores[dtype] = paths.root / f"store-{dtype}.zarr"
        harvest(dataclasses.replace(harvest_config(paths), out=str(stores[dtype]), dtype=dtype))
    return stores


def value_errors(got: torch.Tensor, want: torch.Tensor) -> dict[str, float]:
    got, want = got.double(), want.double()
    row_max = want.abs().amax(dim=1, keepdim=True)
    counted = (want != 0) & (want.abs() >= 1e-3 * row_max)
    element = ((got - want).abs() / want.abs())[counted]
    norms = want.norm(dim=1)
    row = (got - want).norm(dim=1)[norms > 0] / norms[norms > 0]
    return {
        "element median": float(element.median()),
        "element p99": float(element.quantile(0.99)),
        "row median": float(row.median()),
        "row max": float(row.max()),
        "zeros added": float(((want != 0) & (got == 0)).double().mean()),
    }


def print_value_errors(stores: dict[str, Path]) -> None:
    reference = ActivationStore.open(stores["float32"])
    n = reference.n_rows_committed
    want = reference.read_tensors(["activations", "gradients", "position"], 0, n, DEMO_HOOK)
    keep = want["position"] != 0  # position 0 is never trained on
    print("stored values against the float32 store (rows at position > 0)")
    print(
        f"  {'':22s} {'':9s} "
        + " ".join(f"{k:>14s}" for k in value_errors(*[torch.ones(1, 1)] * 2))
    )
    for dtype in DTYPES:
        got = ActivationStore.open(stores[dtype]).read_tensors(
            ["activations", "gradients"], 0, n, DEMO_HOOK
        )
        for name in ("activations", "gradients"):
            errors = value_errors(got[name][keep], want[name][keep])
            print(f"  {name:22s} {dtype:9s} " + " ".join(f"{v:14.2e}" for v in errors.values()))
    for dtype, path in stores.items():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        print(f"  bytes per row, {dtype:8s} {size / n:8.0f}")


def train_and_evaluate(paths: DemoPaths, stores: dict[str, Path], dtype: str, seed: int) -> dict:
    """Report rows by SAE name of the SAEs trained on `dtype`'s store with `seed`, evaluated on
    the float32 store's held-out rows."""
    run = paths.root / f"run-{dtype}-seed{seed}"
    settings = TrainSettings(tokens=172_032, batch_size=1024, device="cpu", seed=seed)
    train(
        TrainRequest(
            store=str(stores[dtype]),
            hook=DEMO_HOOK,
            out=run,
            specs=[parse_spec(f"{text},name={name}") for name, text in SAES.items()],
            settings=settings,
            resume=run.exists(),
        )
    )
    report_dir = paths.root / f"report-{dtype}-seed{seed}"
    request = EvalRequest(
        runs=(str(run),), out=str(report_dir), store=str(stores["float32"]), device="cpu"
    )
    report = json.loads(evaluate(request)["json"].read_text())
    return {row["label"]: row for row in report["rows"]}


def print_quality(results: dict[tuple[str, int], dict]) -> None:
    seeds = sorted({seed for _, seed in results})
    print(f"\nSAE quality, trained on each store with seeds {seeds}, evaluated on float32 rows")
    print(
        f"  {'SAE':22s} {'metric':18s} {'float16 mean':>13s} {'float8 mean':>12s} "
        f"{'float8 - 16':>12s} {'noise (sd)':>11s} {'|diff|/noise':>13s}"
    )
    for name in sorted(next(iter(results.values()))):  # g-SAE rows: [grad] and [plain] modes
        for label, (section, key) in METRICS.items():
            values = {
                dtype: [results[dtype, seed][name][section][key] for seed in seeds]
                for dtype in DTYPES
            }
            means = {dtype: statistics.fmean(v) for dtype, v in values.items()}
            spread = [statistics.stdev(v) for v in values.values() if len(v) > 1]
            noise = statistics.fmean(spread) if spread else float("nan")
            difference = means["float8"] - means["float16"]
            print(
                f"  {name:22s} {label:18s} {means['float16']:13.5f} {means['float8']:12.5f} "
                f"{difference:12.5f} {noise:11.5f} {abs(difference) / noise:13.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/saekit-precision"))
    args = parser.parse_args()
    paths = DemoPaths(args.dir)
    prepare_model_and_corpus(paths)
    stores = harvest_stores(paths)
    print_value_errors(stores)
    results = {
        (dtype, seed): train_and_evaluate(paths, stores, dtype, seed)
        for dtype in DTYPES
        for seed in range(args.seeds)
    }
    print_quality(results)


if __name__ == "__main__":
    main()

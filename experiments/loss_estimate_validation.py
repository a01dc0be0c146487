"""How well the store-only loss-added estimate (`sae eval`'s `loss_added_estimate`) predicts the
online loss added, over every SAE of one or more recipe directories (`sae recipe --out DIR`,
whose evaluation caches hold each SAE's online numbers) or `sae eval` report directories:

    .venv/bin/python experiments/loss_estimate_validation.py DIR [DIR ...] [--out FILE.json]

For every cached row (an SAE in one mode), the estimate is computed from DIR's store (it must keep
gradients at the SAEs' hooks) on all its held-out rows, without the LM. Printed per DIR: Spearman
ρ and the least-squares line (online ≈ a · estimate + b, with R²) for the first-order term alone,
the estimate (first order + ½ mean (gᵀδ)²) and, against the online KL, the Fisher term alone;
then the relative error |estimate − online| / online by NMSE band, which says where the estimate
can be trusted. `--out` writes every row's numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from saekit.cache_format import ActivationStore
from saekit.evaluate import EvalSettings, Evaluation, targets_of
from saekit.train import load_sae, saved_saes

ESTIMATES = ("loss_added_first_order", "kl_estimate", "loss_added_estimate")
BANDS = ((0.0, 0.05), (0.05, 0.15), (0.15, 0.4), (0.4, float("inf")))  # NMSE bands


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks = [np.argsort(np.argsort(v)).astype(float) for v in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def fit(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    r2 = 1 - residual.var() / y.var() if y.var() > 0 else float("nan")
    return {"slope": float(slope), "intercept": float(intercept), "r2": float(r2)}


def rows_of(directory: Path) -> list[dict]:
    """Every evaluated row of a recipe directory (its estimates computed here) or of a
    `sae eval` report directory (whose rows hold both)."""
    if not (directory / "recipe.json").exists():
        report = json.loads((directory / "report.json").read_text())
        return [
            {
                "label": row["label"],
                "variant": row["variant"],
                "mode": row["mode"],
                **{key: row["offline"][key] for key in ("l0", "nmse", *ESTIMATES)},
                "loss_added": row["online"]["loss_added"],
                "kl": row["online"]["kl"],
            }
            for row in report["rows"]
            if row.get("online")
        ]
    record = json.loads((directory / "recipe.json").read_text())
    location = record.get("store") or str(directory / "store.zarr")
    store = ActivationStore.open(location)
    evaluation = Evaluation(store, torch.device("cpu"), EvalSettings(offline_tokens=None))
    rows = []
    for recipe in record["recipes"]:
        for run in sorted((directory / recipe / "runs").iterdir()):
            cache_file = directory / recipe / "evals" / f"{run.name}.json"
            cached = json.loads(cache_file.read_text())
            targets = [
                target
                for sae_dir in saved_saes(run)
                for target in targets_of(run.name, load_sae(sae_dir), diagnostic=True)
                if target.label in cached and cached[target.label].get("online")
            ]
            for row in evaluation.rows(targets):
                online = cached[row["label"]]["online"]
                rows.append(
                    {
                        "recipe": recipe,
                        "run": run.name,
                        "label": row["label"],
                        "variant": row["variant"],
                        "mode": row["mode"],
                        "l0": row["offline"]["l0"],
                        "nmse": row["offline"]["nmse"],
                        **{
                            key: row["offline"][key]
                            for key in (
                                "loss_added_first_order",
                                "kl_estimate",
                                "loss_added_estimate",
                            )
                        },
                        "loss_added": online["loss_added"],
                        "kl": online["kl"],
                    }
                )
    return rows


def agreement(estimate: np.ndarray, truth: np.ndarray) -> dict:
    """Rank correlation, the least-squares line, the median ratio and the share within 25 %."""
    ratio = estimate / truth
    return {
        "spearman": spearman(estimate, truth),
        "fit": fit(estimate, truth),
        "median_ratio": float(np.median(ratio)),
        "within_25_percent": float(np.mean(np.abs(ratio - 1) <= 0.25)),
    }


def summary(rows: list[dict]) -> dict:
    """Agreement of each estimate with what it estimates, over all rows and by NMSE band."""
    pairs = {
        "loss_added_first_order": "loss_added",
        "loss_added_estimate": "loss_added",
        "kl_estimate": "kl",
    }
    out: dict = {"saes": len(rows)}
    for key, truth in pairs.items():
        out[key] = agreement(np.array([r[key] for r in rows]), np.array([r[truth] for r in rows]))
    nmse = np.array([r["nmse"] for r in rows])
    bands = {}
    for low, high in BANDS:
        inside = [r for r, n in zip(rows, nmse, strict=True) if low <= n < high]
        if len(inside) >= 3:
            bands[f"{low}-{high}"] = {"saes": len(inside)} | {
                key: agreement(
                    np.array([r[key] for r in inside]), np.array([r[truth] for r in inside])
                )
                for key, truth in pairs.items()
                if key != "loss_added_first_order"
            }
    out["by_nmse"] = bands
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--rows", type=Path, help="summarise the rows of an earlier --out instead of computing"
    )
    args = parser.parse_args()
    earlier = json.loads(args.rows.read_text()) if args.rows else {}
    results = {}
    for directory in args.dirs:
        rows = earlier[str(directory)]["rows"] if earlier else rows_of(directory)
        results[str(directory)] = {"summary": summary(rows), "rows": rows}
        print(directory, json.dumps(results[str(directory)]["summary"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

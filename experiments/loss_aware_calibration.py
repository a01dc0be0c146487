"""Calibrate the loss-aware weight: TopK SAEs at two L0s trained with `loss_aware` from 0 to 10 on
one store, in one run (the same batches), then evaluated offline and spliced into the LM:

    .venv/bin/python experiments/loss_aware_calibration.py STORE OUT [--k 16 32]
        [--weights 0 0.1 0.3 1 3 10] [--tokens 524288] [--latents-factor 8]

Prints, per k and weight, L0, NMSE, the store-only estimate and the online loss added and KL,
and writes OUT/calibration.json. Resumable: a finished run is not trained again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from saekit.cache_format import ActivationStore
from saekit.evaluate import EvalRequest, evaluate
from saekit.train import TrainRequest, TrainSettings, parse_spec, run_finished, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store")
    parser.add_argument("out", type=Path)
    parser.add_argument("--k", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--weights", type=float, nargs="+", default=[0, 0.1, 0.3, 1, 3, 10])
    parser.add_argument("--tokens", type=int, default=524_288)
    parser.add_argument("--latents-factor", type=int, default=8)
    parser.add_argument("--online-tokens", type=int, default=16_384)
    args = parser.parse_args()
    store = ActivationStore.open(args.store)
    (hook,) = [h for h in store.hooks if store.has_gradients(h)][:1]
    latents = args.latents_factor * store.spec.hooks[hook].d
    specs = [
        f"topk:k={k},latents={latents}" + (f",loss_aware={w:g}" if w else "")
        for k in args.k
        for w in args.weights
    ]
    run = args.out / "run"
    if not run_finished(run):
        train(
            TrainRequest(
                store=args.store,
                hook=hook,
                out=run,
                specs=[parse_spec(text) for text in specs],
                settings=TrainSettings(tokens=args.tokens, batch_size=1024, seed=0),
                resume=run.exists(),
            )
        )
    report = args.out / "eval"
    if not (report / "report.json").exists():
        evaluate(
            EvalRequest(runs=(str(run),), out=str(report), device="cpu", tokens=args.online_tokens)
        )
    rows = json.loads((report / "report.json").read_text())["rows"]
    table = []
    for row in rows:
        off, on = row["offline"], row["online"]
        table.append(
            {
                "k": row["options"]["k"],
                "loss_aware": row["options"].get("loss_aware", 0.0),
                "l0": off["l0"],
                "nmse": off["nmse"],
                "estimate": off.get("loss_added_estimate"),
                "loss_added": on["loss_added"],
                "kl": on["kl"],
            }
        )
    table.sort(key=lambda r: (r["k"], r["loss_aware"]))
    for r in table:
        print(
            f"k {r['k']:>3}  w {r['loss_aware']:>5g}  L0 {r['l0']:6.1f}  NMSE {r['nmse']:.4f}  "
            f"est {r['estimate']:.5f}  loss added {r['loss_added']:.5f}  KL {r['kl']:.5f}"
        )
    (args.out / "calibration.json").write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()

"""The loss-aware experiments on the research LM (experiments/research_lm.py): a store of its
middle layer with gradients, one run of ~30 dictionaries of several variants and L0s (the
estimate's validation set) and of TopK at two L0s with `loss_aware` from 0 to 3 (its
calibration), evaluated offline and spliced into the LM:

    .venv/bin/python experiments/research_loss.py [--tokens 524288] [--online-tokens 8192]

Writes experiments/output/research-loss/ (store.zarr, run/, eval/); resumable. Then
    .venv/bin/python experiments/loss_estimate_validation.py experiments/output/research-loss/eval
Skips with a message when the research LM or the shared data is absent.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from saekit.evaluate import EvalRequest, evaluate
from saekit.harvest import HarvestConfig, harvest
from saekit.train import TrainRequest, TrainSettings, parse_spec, run_finished, train

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "experiments" / "output"
DATA_CANDIDATES = (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data")
HOOK = "blocks.2.hook_resid_post"
LATENTS = 1536  # 8 · d

VALIDATION = [
    *(f"topk:k={k}" for k in (8, 16, 32, 64)),
    *(f"batchtopk:k={k}" for k in (16, 32)),
    *(f"feature-choice:k={k}" for k in (16, 32)),
    *(f"gsae:k={k}" for k in (16, 32)),
    "gsae:k=16,beta_eff=0.3,selection_only=false",
    *(f"relu:l1={l1}" for l1 in (1, 4)),
    *(f"jumprelu:l0={c}" for c in (10, 30)),
    *(f"gated:l1={l1}" for l1 in (1, 4)),
    "matryoshka:k=16",
]
CALIBRATION = [f"topk:k={k},loss_aware={w}" for k in (16, 32) for w in (0.1, 0.3, 1, 3)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=524_288)
    parser.add_argument("--online-tokens", type=int, default=8192)
    args = parser.parse_args()
    model = OUTPUT / "research-lm"
    data = [p / "text" for p in DATA_CANDIDATES if (p / "text").is_dir()]
    if not (model / "config.json").exists() or not data:
        print("skipped: build experiments/output/research-lm first (needs shared/data)")
        return
    out = OUTPUT / "research-loss"
    store = out / "store.zarr"
    harvest(
        HarvestConfig(
            model=str(model),
            dataset=str(data[0]),
            hooks=(HOOK,),
            out=str(store),
            tokens=262_144,
            holdout_tokens=16_384,
            context_size=128,
            batch_size=16,
        )
    )  # fmt: skip  (resumes, or does nothing when complete)
    run = out / "run"
    specs = [f"{text},latents={LATENTS}" for text in VALIDATION + CALIBRATION]
    if not run_finished(run):
        train(
            TrainRequest(
                store=str(store), hook=HOOK, out=run,
                specs=[parse_spec(text) for text in specs],
                settings=TrainSettings(tokens=args.tokens, batch_size=1024, seed=0),
                resume=run.exists(),
            )
        )  # fmt: skip
    report = out / "eval"
    if not (report / "report.json").exists():
        evaluate(
            EvalRequest(runs=(str(run),), out=str(report), device="cpu", tokens=args.online_tokens)
        )
    rows = json.loads((report / "report.json").read_text())["rows"]
    for row in rows:
        off, on = row["offline"], row["online"] or {}
        print(
            f"{row['label']:<48} L0 {off['l0']:6.1f}  NMSE {off['nmse']:.4f}  est "
            f"{off.get('loss_added_estimate', float('nan')):.4f}  KL est "
            f"{off.get('kl_estimate', float('nan')):.4f}  loss added "
            f"{on.get('loss_added', float('nan')):.4f}  KL {on.get('kl', float('nan')):.4f}"
        )


if __name__ == "__main__":
    main()

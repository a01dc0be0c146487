"""Run the recipes on the research LM (experiments/research_lm.py) with the small preset, its L0
grids moved to the research note's L0s (16 and 32) and a shorter online evaluation, to fit a
shared 2-core CPU:

    .venv/bin/python experiments/research_recipes.py gsae choice gated
    .venv/bin/python experiments/research_recipes.py e2e --out experiments/output/research-e2e \
        --store experiments/output/research-loss/store.zarr

Writes experiments/output/research-recipes/ or --out (report.md, report.json, figures/);
resumable like `sae recipe`; --store reuses a store of the research LM (e2e needs one with
gradients at the residual stream, as research_loss.py harvests) instead of harvesting.
Skips with a message when the research LM or the shared data is absent.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from saekit.recipes import SMALL, RecipeRequest, Reporter, run_recipes
from saekit.recipes.choice import ChoiceGrid
from saekit.recipes.e2e import GRIDS as E2E_GRIDS
from saekit.recipes.gsae import GRIDS as GSAE_GRIDS
from saekit.recipes.transcoders import GRIDS as TRANSCODERS_GRIDS

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "experiments" / "output"
DATA_CANDIDATES = (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data")

RESEARCH = dataclasses.replace(
    SMALL,
    name="small-research",
    online_tokens=8192,
    eval_batch=8,
    grids={
        "gsae": dataclasses.replace(
            GSAE_GRIDS["small"], k=(16, 32), headline_k=16, width_factors=(0.5, 1.0)
        ),
        "choice": ChoiceGrid(k=(16, 32)),
        "transcoders": dataclasses.replace(TRANSCODERS_GRIDS["small"], k=(16, 32)),
        "e2e": dataclasses.replace(E2E_GRIDS["small"], k=(16, 32)),
    },
)


class Print(Reporter):
    def message(self, text: str) -> None:
        print(text, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="*", default=["all"])
    parser.add_argument("--out", type=Path, default=OUTPUT / "research-recipes")
    parser.add_argument("--store", help="a store of the research LM to use instead of harvesting")
    args = parser.parse_args()
    model = OUTPUT / "research-lm"
    data = [p / "text" for p in DATA_CANDIDATES if (p / "text").is_dir()]
    if not (model / "config.json").exists() or not data:
        print("skipped: build experiments/output/research-lm first (needs shared/data)")
        return
    request = RecipeRequest(
        recipes=tuple(args.recipes),
        out=args.out,
        model=str(model),
        dataset=None if args.store else str(data[0]),
        store=args.store,
        preset=RESEARCH,
        device="cpu",
    )
    outcome = run_recipes(request, Print())
    print(f"trained {outcome.trained_runs}, evaluated {outcome.evaluated_rows} rows")
    print(f"report: {outcome.report}")


if __name__ == "__main__":
    main()

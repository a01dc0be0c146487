"""`sae demo`: the offline end-to-end job (it grows as harvest, train and eval land)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from saekit.cli.common import console
from saekit.cli.harvest import HarvestBar
from saekit.cli.store import print_summary

DEFAULT_OUT = Path("demo-output")


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Annotated[Path, typer.Option(help="Directory for the demo's files.")] = DEFAULT_OUT,
    ) -> None:
        """Run the offline demo: build a tiny GPT-2, harvest it, check the store."""
        from saekit.cache_format import ActivationStore
        from saekit.cache_format.summary import describe
        from saekit.cache_format.verify import verify_store
        from saekit.demo.pipeline import DemoPaths, harvest_config, prepare_model_and_corpus
        from saekit.errors import IntegrityError
        from saekit.harvest import plan_harvest, run_harvest

        paths = DemoPaths(out)
        console.rule("1. a generated corpus and a tiny GPT-2 trained on it (offline)")
        with console.status("building"):
            prepare_model_and_corpus(paths)
        console.print(f"model: {paths.model}   corpus: {paths.corpus}")
        console.rule("2. harvest activations and loss gradients")
        with HarvestBar() as bar:
            run_harvest(plan_harvest(harvest_config(paths)), bar)
        store = ActivationStore.open(paths.store)
        print_summary(describe(store))
        problems = verify_store(store)
        if problems:
            raise IntegrityError(f"the demo store failed verification: {problems[0]}")
        console.print("verified: every checksum and value is sound")
        console.print(f"demo finished; files are in {out}")

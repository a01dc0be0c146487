"""`sae demo`: the offline end-to-end job: tiny GPT-2, harvest, train, eval, inspect."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import TextColumn

from saekit.cli.common import console, progress_bar
from saekit.cli.evaluate import EvalBar, print_report_summary
from saekit.cli.harvest import HarvestBar
from saekit.cli.store import print_store_summary
from saekit.cli.train import ProgressReporter, print_result

DEFAULT_OUT = Path("demo-output")


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Annotated[Path, typer.Option(help="Directory for the demo's files.")] = DEFAULT_OUT,
    ) -> None:
        """Run the whole pipeline offline: tiny GPT-2, harvest, train 7 SAE variants, eval,
        latent dashboards."""
        from saekit.base.errors import IntegrityError
        from saekit.cache_format import ActivationStore
        from saekit.cache_format.summary import describe
        from saekit.cache_format.verify import verify_store
        from saekit.dashboard import build_dashboard
        from saekit.demo.pipeline import (
            DemoPaths,
            claim_output,
            eval_request,
            harvest_config,
            inspect_request,
            prepare_model_and_corpus,
            train_request,
        )
        from saekit.evaluate import evaluate, link_inspect_site
        from saekit.harvest import plan_harvest, run_harvest
        from saekit.train import train

        paths = DemoPaths(out)
        claim_output(paths)
        console.rule("1. a generated corpus and a tiny GPT-2 trained on it (offline)")
        with console.status("building"):
            prepare_model_and_corpus(paths)
        console.print(f"model: {paths.model}   corpus: {paths.corpus}")
        console.rule("2. harvest activations and loss gradients")
        with HarvestBar() as bar:
            run_harvest(plan_harvest(harvest_config(paths)), bar)
        store = ActivationStore.open(paths.store)
        print_store_summary(describe(store))
        problems = verify_store(store)
        if problems:
            raise IntegrityError(f"the demo store failed verification: {problems[0]}")
        console.print("verified: every checksum and value is sound")
        console.rule("3. train 7 SAE variants on the same batches (the LM is not loaded)")
        with ProgressReporter(progress_bar(TextColumn("{task.fields[rate]}"))) as reporter:
            print_result(train(train_request(paths), reporter))
        console.rule("4. evaluate: held-out rows, splicing into the LM, steering")
        with EvalBar() as eval_bar:
            files = evaluate(eval_request(paths), eval_bar)
        console.rule("5. latent dashboards: contexts, histograms, logit effects (sae inspect)")
        with EvalBar() as inspect_bar:
            build_dashboard(inspect_request(paths), inspect_bar)
        link_inspect_site(paths.report)
        console.rule("done")
        print_report_summary(files)

"""`sae recipe`: reproduce a seed paper's headline comparison with one command."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import TextColumn
from rich.table import Table

from saekit.cli.common import (
    DEVICE_HELP,
    StorageOptions,
    TensorboardDir,
    WandbProject,
    console,
    invocation,
    parse_storage_options,
    print_table,
    progress_bar,
)
from saekit.cli.harvest import HarvestBar
from saekit.cli.train import ProgressReporter


class RecipeReporter:
    """Phase messages on stdout, harvest and training progress bars on stderr."""

    def message(self, text: str) -> None:
        console.print(text, markup=False)

    @contextlib.contextmanager
    def harvesting(self) -> Iterator[HarvestBar]:
        with HarvestBar() as bar:
            yield bar

    @contextlib.contextmanager
    def training(self) -> Iterator[ProgressReporter]:
        bar = progress_bar(TextColumn("{task.fields[rate]}"))
        try:
            yield ProgressReporter(bar)
        finally:
            bar.stop()


def print_claims(report_json: Path) -> None:
    report = json.loads(report_json.read_text())
    for warning in report.get("warnings", []):
        console.print(f"warning: {warning}", markup=False)
    table = Table(title="Claims", title_justify="left")
    for column in ("recipe", "claim", "compared", "verdict"):
        table.add_column(column)
    for claim in report["claims"]:
        table.add_row(
            claim["recipe"], escape(claim["claim"]), escape(claim["arms"]), claim["verdict"]
        )
    print_table(table)


def register(app: typer.Typer) -> None:
    @app.command()
    def recipe(
        name: Annotated[
            list[str],
            typer.Argument(
                help="gsae, choice, gated, transcoders, e2e or all (several may be given)."
            ),
        ],
        out: Annotated[Path, typer.Option(help="Directory for the store, runs and report.")],
        model: Annotated[
            str | None,
            typer.Option(help="Hugging Face hub name or local model (default: the store's)."),
        ] = None,
        dataset: Annotated[
            str | None, typer.Option(help="Text to harvest from (as sae harvest --dataset).")
        ] = None,
        store: Annotated[
            str | None, typer.Option(help="Use this store instead of harvesting one.")
        ] = None,
        preset: Annotated[
            str, typer.Option(help="small (CPU, tiny LM) or paper (the papers' settings, GPU).")
        ] = "small",
        device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
        allow_other_model: Annotated[
            bool,
            typer.Option(
                "--allow-other-model",
                help="Splice the SAEs into a --model whose weights or tokenizer differ from the "
                "--store's (the report says so).",
            ),
        ] = False,
        cluster: Annotated[
            str | None,
            typer.Option(
                help="Train each run's SAEs in groups and evaluate the SAEs in parallel on this "
                "dask.distributed scheduler, or on local[:W], a LocalCluster of W workers "
                "started here (default: one per GPU, else 2)."
            ),
        ] = None,
        storage_options: StorageOptions = None,
        wandb: WandbProject = None,
        tensorboard: TensorboardDir = None,
    ) -> None:
        """Run a paper's headline comparison: harvest, train the sweep, evaluate, report."""
        from saekit.base.tracking import Tracking
        from saekit.recipes import RecipeRequest, run_recipes

        request = RecipeRequest(
            recipes=tuple(name),
            out=out,
            model=model,
            dataset=dataset,
            store=store,
            preset=preset,
            device=device,
            storage_options=parse_storage_options(storage_options),
            command=invocation(),
            allow_other_model=allow_other_model,
            tracking=Tracking(wandb, tensorboard),
            cluster=cluster,
        )
        outcome = run_recipes(request, RecipeReporter())
        trained, evaluated = len(outcome.trained_runs), outcome.evaluated_rows
        done = " (everything was already done)" if not trained and not evaluated else ""
        console.print(f"trained {trained} run(s), evaluated {evaluated} row(s){done}")
        print_claims(outcome.report.with_suffix(".json"))
        console.print(f"report: {outcome.report}")

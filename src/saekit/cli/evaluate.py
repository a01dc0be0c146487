"""`sae eval`: offline metrics, online loss added, reports with plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from saekit.cli.common import (
    DEVICE_HELP,
    LateProgressBar,
    StorageOptions,
    TensorboardDir,
    WandbProject,
    console,
    parse_storage_options,
    print_table,
)


class EvalBar(LateProgressBar):
    """A progress bar for the stages of an evaluation, one line per stage."""

    def stage(self, description: str, total: int | None) -> None:
        if self.task is not None:  # the previous stage is done
            self.bar.update(self.task, completed=self.bar.tasks[-1].total or 1)
        self.add_task(description, total)


def print_report_summary(files: dict[str, Path]) -> None:
    """The main numbers of a report as a table, then where its files are."""
    report = json.loads(files["json"].read_text())
    table = Table(
        title=f"{report['tokens']['offline']:,} held-out tokens offline, "
        f"{report['tokens']['online']:,} online",
        title_justify="left",
    )
    table.add_column("SAE [mode]", overflow="fold")
    for column in ("L0", "NMSE", "dead (held-out)", "loss added", "CE rec.", "KL"):
        table.add_column(column, justify="right", no_wrap=True)

    def number(value: float | None, form: str) -> str:
        return "–" if value is None else format(value, form)

    for row in report["rows"]:
        online = row["online"] or {}
        table.add_row(
            escape(row["label"]),
            number(row["offline"]["l0"], ".1f"),
            number(row["offline"]["nmse"], ".4f"),
            number(row["offline"]["dead_fraction"], ".0%"),
            number(online.get("loss_added"), ".3f"),
            number(online.get("ce_recovered_zero"), ".3f"),
            number(online.get("kl"), ".3f"),
        )
    print_table(table)
    for warning in report.get("warnings", []):
        console.print(f"warning: {warning}", markup=False)
    console.print(f"report: {files['markdown']}")
    for name in ("l0_vs_nmse", "l0_vs_loss_added", "dead_latents"):
        console.print(f"plot:   {files[name]}")
    if report.get("inspect"):
        console.print(f"dashboards: {files['json'].parent / report['inspect']}")


def register(app: typer.Typer) -> None:
    @app.command(name="eval")
    def evaluate(
        runs: Annotated[list[str], typer.Argument(help="Run directories written by sae train.")],
        out: Annotated[str, typer.Option(help="Report directory (report.json, report.md, plots).")],
        store: Annotated[
            str | None,
            typer.Option(help="Store path or URL (default: the store the SAEs were trained on)."),
        ] = None,
        online: Annotated[
            bool,
            typer.Option("--online/--no-online", help="Splice the SAEs into the LM (loss added)."),
        ] = True,
        tokens: Annotated[
            int | None, typer.Option(help="Held-out tokens to evaluate on (default: all).")
        ] = None,
        model: Annotated[
            str | None,
            typer.Option(help="LM for online eval (default: the model named in the store)."),
        ] = None,
        device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
        batch_size: Annotated[int, typer.Option(help="Contexts per LM forward pass.")] = 8,
        steering: Annotated[
            bool, typer.Option("--steering", help="Also measure logit steering (g-SAE paper).")
        ] = False,
        skip_nonfinite: Annotated[
            bool,
            typer.Option(
                "--skip-nonfinite",
                help="Leave store rows holding NaN or Inf out (the report counts them) instead "
                "of stopping.",
            ),
        ] = False,
        allow_other_model: Annotated[
            bool,
            typer.Option(
                "--allow-other-model",
                help="Measure SAEs on a store of another model than the one they were trained "
                "on, or online with a model whose weights or tokenizer differ from the store's "
                "(the report says so).",
            ),
        ] = False,
        inspect: Annotated[
            bool,
            typer.Option("--inspect", help="Also build latent dashboards into REPORT/inspect."),
        ] = False,
        storage_options: StorageOptions = None,
        wandb: WandbProject = None,
        tensorboard: TensorboardDir = None,
    ) -> None:
        """Evaluate every SAE of the runs on the store's held-out tokens; write a report."""
        from saekit.base.tracking import Tracking
        from saekit.evaluate import (
            INSPECT_SITE,
            EvalRequest,
            check_tracking,
            evaluate,
            link_inspect_site,
            track_report,
        )

        tracking = Tracking(wandb, tensorboard)
        check_tracking(tracking, runs)

        request = EvalRequest(
            runs=tuple(runs),
            out=out,
            store=store,
            storage_options=parse_storage_options(storage_options),
            online=online,
            tokens=tokens,
            model=model,
            device=device,
            batch_size=batch_size,
            steering=steering,
            skip_nonfinite=skip_nonfinite,
            allow_other_model=allow_other_model,
        )
        dashboard = None
        if inspect:  # checked (and its model loaded) before anything is written
            from saekit.dashboard import InspectRequest, prepare_dashboard

            site = Path(out) / Path(INSPECT_SITE).parent
            dashboard = prepare_dashboard(
                InspectRequest(
                    saes=tuple(runs),
                    out=str(site),
                    store=store,
                    storage_options=request.storage_options,
                    tokens=tokens,
                    model=model,
                    device=device,
                    allow_other_model=allow_other_model,
                )
            )
        with EvalBar() as bar:
            files = evaluate(request, bar)
            if dashboard is not None:
                dashboard.build(bar)
                link_inspect_site(Path(out))
        tracked = track_report(tracking, files["json"], runs) if tracking else []
        print_report_summary(files)
        for where in tracked:
            console.print(where, markup=False)

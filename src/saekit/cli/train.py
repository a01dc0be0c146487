"""`sae train`: fit SAE variants on rows streamed from a store."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import TextColumn
from rich.table import Table

from saekit.base.cluster import Cluster
from saekit.base.tracking import Tracking
from saekit.cli.common import (
    DEVICE_HELP,
    BarOwner,
    StorageOptions,
    TensorboardDir,
    WandbProject,
    console,
    parse_storage_options,
    print_table,
    progress_bar,
)
from saekit.train import (
    TRAIN_RESOURCE,
    Observer,
    Plan,
    RunResult,
    TrainRequest,
    TrainSettings,
    described_names,
    load_config,
    parse_spec,
    train,
)

SPEC_HELP = (
    "An SAE to train, as variant[:key=value,...]; repeat for several SAEs trained on the same "
    f"batches. Variants: {', '.join(described_names())}. Keys include "
    "latents, k, lr, aux, l1, beta, beta_eff, name; see docs/variants.md."
)


class ProgressReporter(BarOwner, Observer):
    """Draws the run's progress bar, from the first step on (errors before it print alone)."""

    def split(self, groups: list[list[str]], time_fraction: float) -> None:
        saes = sum(map(len, groups))
        self.bar.console.print(
            f"{saes} SAEs in {len(groups)} group(s), each on its own device (estimated: "
            f"{time_fraction:.0%} of one device's time): "
            + "; ".join(", ".join(group) for group in groups),
            soft_wrap=True,
        )

    def started(self, plan: Plan, start_step: int) -> None:
        self.bar.start()
        self.bar.console.print(
            f"{plan.tokens:,} tokens in {plan.steps:,} steps of {plan.batch_size:,}: "
            f"{plan.epochs:.2f} epochs of {plan.train_rows:,} training rows"
            + (f"; resuming at step {start_step:,}" if start_step else ""),
            soft_wrap=True,
        )
        self.task = self.bar.add_task("training", total=plan.steps, completed=start_step, rate="")

    def stepped(self, step: int, epoch: int) -> None:
        self.bar.update(self.task, completed=step)

    def epoch_started(self, epoch: int, plan: Plan) -> None:
        self.bar.console.print(f"epoch {epoch + 1} of {math.ceil(plan.epochs)}", soft_wrap=True)

    def logged(self, step: int, records: list[dict[str, Any]]) -> None:
        tokens_per_s, waiting = records[0]["tokens_per_s"], records[0]["data_wait_fraction"]
        self.bar.update(self.task, rate=f"{tokens_per_s:,.0f} tok/s, {waiting:.0%} waiting on data")


def print_result(result: RunResult) -> None:
    if result.already_complete:
        console.print(f"run {result.run_dir} was already complete; SAEs re-exported")
    table = Table(title=f"SAEs of {result.run_dir}", title_justify="left")
    for column in ("sae", "NMSE", "L0", "dead in training", "saved to"):
        table.add_column(column)
    for name, directory in result.sae_dirs.items():
        record = result.final_metrics.get(name, {})
        table.add_row(
            name,
            f"{record['nmse']:.4f}" if record else "",
            f"{record['l0']:.1f}" if record else "",
            f"{record['dead_fraction']:.1%}" if record else "",
            str(directory),
        )
    print_table(table)
    console.print(
        "dead in training: latents that did not fire in an SAE's last dead_tokens training tokens "
        "(default 1,000,000; none in a shorter run). sae eval measures dead (held-out): latents "
        "that never fire on the held-out tokens.",
        markup=False,
    )
    metrics = result.final_metrics.values()
    skipped = max((record.get("nonfinite_rows_skipped", 0) for record in metrics), default=0)
    if skipped:
        console.print(f"warning: {skipped:,} rows holding NaN or Inf were left out of training")
    for where in result.tracked:
        console.print(where, markup=False)


def register(app: typer.Typer) -> None:
    @app.command(name="train")
    def train_command(
        store: Annotated[str, typer.Option(help="Store path or fsspec URL.", show_default=False)],
        out: Annotated[
            Path, typer.Option(help="Run directory for config, metrics, checkpoints and SAEs.")
        ],
        sae: Annotated[list[str] | None, typer.Option("--sae", help=SPEC_HELP)] = None,
        hook: Annotated[
            str | None, typer.Option(help="Hook to train on (default: the store's only hook).")
        ] = None,
        tokens: Annotated[
            int | None,
            typer.Option(
                help="Training tokens (default: one epoch); more than the store's "
                "training rows means several epochs."
            ),
        ] = None,
        batch_size: Annotated[
            int | None, typer.Option(help="Tokens per step (default 4096).")
        ] = None,
        lr: Annotated[
            float | None,
            typer.Option(
                help="Learning rate of SAEs without an lr key (default 2e-4·sqrt(16384/F))."
            ),
        ] = None,
        device: Annotated[str | None, typer.Option(help=f"{DEVICE_HELP} Default auto.")] = None,
        seed: Annotated[int | None, typer.Option(help="Shuffle and init seed (default 0).")] = None,
        config: Annotated[
            Path | None, typer.Option(help="TOML file of settings and SAE tables (docs/cli.md).")
        ] = None,
        resume: Annotated[
            bool, typer.Option("--resume", help="Continue the run in --out from its checkpoint.")
        ] = False,
        checkpoint_every: Annotated[
            int | None,
            typer.Option(help="Tokens between checkpoints; 0: only at the end (default 5e6)."),
        ] = None,
        skip_nonfinite: Annotated[
            bool,
            typer.Option(
                "--skip-nonfinite",
                help="Leave store rows holding NaN or Inf out of training (counted in the "
                "metrics) instead of stopping.",
            ),
        ] = False,
        groups: Annotated[
            int | None,
            typer.Option(
                help="Split the SAEs into N groups, each trained on its own device from the same "
                "batches (default with --cluster: one per worker); without --cluster the groups "
                "run one after another here."
            ),
        ] = None,
        cluster: Annotated[
            str | None,
            typer.Option(
                help="Train the groups as tasks on this dask.distributed scheduler, or on "
                "local[:W], a LocalCluster of W workers started here (default: one per GPU, "
                "else 2)."
            ),
        ] = None,
        storage_options: StorageOptions = None,
        wandb: WandbProject = None,
        tensorboard: TensorboardDir = None,
    ) -> None:
        """Train SAEs on shuffled rows streamed from a store (several SAEs per pass)."""
        file_settings, specs = load_config(config) if config else ({}, [])
        given = {
            "tokens": tokens,
            "batch_size": batch_size,
            "lr": lr,
            "device": device,
            "seed": seed,
            "checkpoint_every": checkpoint_every,
            "skip_nonfinite": skip_nonfinite or None,
        }
        settings = TrainSettings(
            **{**file_settings, **{k: v for k, v in given.items() if v is not None}}
        )
        specs += [parse_spec(text) for text in sae or []]
        request = TrainRequest(
            store=store,
            hook=hook,
            out=out,
            specs=specs,
            settings=settings,
            resume=resume,
            storage_options=parse_storage_options(storage_options),
            tracking=Tracking(wandb, tensorboard),
            groups=groups,
        )
        running = Cluster(cluster, TRAIN_RESOURCE) if cluster else None
        with (
            running or contextlib.nullcontext(),
            ProgressReporter(progress_bar(TextColumn("{task.fields[rate]}"))) as reporter,
        ):
            result = train(request, reporter, running)
        print_result(result)

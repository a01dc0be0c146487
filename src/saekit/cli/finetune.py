"""`sae finetune`: fine-tune saved SAEs on the spliced model's KL to the clean model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import TextColumn
from rich.table import Table

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

if TYPE_CHECKING:
    from saekit.finetune import FinetuneResult
    from saekit.train import Plan


class FinetuneBar(BarOwner):
    """The fine-tune's progress bar, from its first step on (errors before it print alone)."""

    def started(self, plan: Plan, start_step: int, contexts_per_step: int) -> None:
        self.bar.start()
        self.bar.console.print(
            f"{plan.tokens:,} tokens in {plan.steps:,} steps of {contexts_per_step} contexts"
            + (f"; resuming at step {start_step:,}" if start_step else ""),
            soft_wrap=True,
        )
        self.task = self.bar.add_task("fine-tuning", total=plan.steps, completed=start_step, kl="")

    def stepped(self, step: int) -> None:
        self.bar.update(self.task, completed=step)

    def logged(self, step: int, records: list[dict[str, Any]]) -> None:
        kl = ", ".join(f"{record['loss/kl']:.4f}" for record in records)
        rate = records[0]["tokens_per_s"]
        self.bar.update(self.task, kl=f"KL {kl}, {rate:,.0f} tok/s")


def print_result(result: FinetuneResult) -> None:
    if result.already_complete:
        console.print(f"the fine-tunes were already complete; SAEs saved again in {result.run}")
    table = Table(title=f"Fine-tuned SAEs of {result.run}", title_justify="left")
    for column in ("sae", "from", "KL", "loss added", "NMSE", "L0", "saved to"):
        table.add_column(column)
    for name, directory in result.saes.items():
        record = result.final_metrics.get(name, {})

        def number(key: str, form: str, record: dict = record) -> str:
            return format(record[key], form) if key in record else ""

        table.add_row(
            escape(name),
            escape(result.sources[name]),
            number("loss/kl", ".4f"),
            number("loss_added", ".4f"),
            number("nmse", ".4f"),
            number("l0", ".1f"),
            escape(str(directory)),
        )
    print_table(table)
    console.print(
        "KL, loss added, NMSE and L0: the last logged steps' training batches; measure the SAEs "
        f"on held-out tokens with: sae eval {result.run} --out REPORT",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    @app.command(name="finetune")
    def finetune_command(
        run: Annotated[str, typer.Argument(help="Run directory written by sae train.")],
        tokens: Annotated[
            int, typer.Option(help="Fine-tuning tokens (whole steps of --batch-size contexts).")
        ],
        sae: Annotated[
            list[str] | None,
            typer.Option(
                "--sae",
                help="Name of an SAE of the run; repeat for several (default: "
                "every SAE the run's training saved).",
            ),
        ] = None,
        model: Annotated[
            str | None,
            typer.Option(help="The LM (default: the store's; another model is refused)."),
        ] = None,
        store: Annotated[
            str | None,
            typer.Option(help="Store path or URL (default: the store the SAEs were trained on)."),
        ] = None,
        dataset: Annotated[
            str | None,
            typer.Option(
                help="Text to fine-tune on, as sae harvest --dataset (default: the store's own "
                "training contexts)."
            ),
        ] = None,
        text_column: Annotated[str, typer.Option(help="Text field of .jsonl/.parquet/hub.")] = (
            "text"
        ),
        split: Annotated[str, typer.Option(help="Split of a hub dataset.")] = "train",
        batch_size: Annotated[int, typer.Option(help="Contexts per step.")] = 8,
        lr: Annotated[
            float | None,
            typer.Option(help="Learning rate (default: a quarter of each SAE's training lr)."),
        ] = None,
        suffix: Annotated[
            str | None,
            typer.Option(help="The new SAEs are NAME-SUFFIX (default: kl<tokens>, e.g. kl2M)."),
        ] = None,
        device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
        seed: Annotated[int, typer.Option(help="Order of the contexts.")] = 0,
        checkpoint_every: Annotated[
            int, typer.Option(help="Tokens between checkpoints; 0: only at the end.")
        ] = 5_000_000,
        storage_options: StorageOptions = None,
        wandb: WandbProject = None,
        tensorboard: TensorboardDir = None,
    ) -> None:
        """Fine-tune saved SAEs on the spliced LM's KL to the clean LM plus their reconstruction
        loss; save them as new SAEs of the run (re-run the same command to resume)."""
        from saekit.finetune import FinetuneRequest, finetune

        request = FinetuneRequest(
            run=run,
            tokens=tokens,
            saes=tuple(sae or ()),
            model=model,
            store=store,
            dataset=dataset,
            text_column=text_column,
            split=split,
            batch_size=batch_size,
            lr=lr,
            suffix=suffix,
            device=device,
            seed=seed,
            checkpoint_every=checkpoint_every,
            storage_options=parse_storage_options(storage_options),
            tracking=Tracking(wandb, tensorboard),
        )
        with FinetuneBar(progress_bar(TextColumn("{task.fields[kl]}"))) as bar:
            result = finetune(request, bar)
        print_result(result)

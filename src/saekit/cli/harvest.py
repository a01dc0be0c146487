"""`sae harvest`: run an LM over text and store activations, loss gradients, tokens and loss."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import ProgressColumn, Task
from rich.text import Text

from saekit.cli.common import console, err_console, invocation, progress_bar


class TokensPerSecond(ProgressColumn):
    """Harvest speed in tokens per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} tok/s" if speed else "… tok/s", style="progress.data.speed")


class HarvestBar:
    """Adapts a rich progress bar to the harvest's progress protocol."""

    def __init__(self, bar) -> None:
        self.bar = bar
        self.task = None

    def start(self, total_rows: int | None, done_rows: int) -> None:
        self.task = self.bar.add_task("harvesting tokens", total=total_rows, completed=done_rows)

    def advance(self, rows: int) -> None:
        self.bar.advance(self.task, rows)


def register(app: typer.Typer) -> None:
    @app.command()
    def harvest(
        dataset: Annotated[
            str,
            typer.Option(
                help="A .txt/.jsonl/.parquet file, a directory or glob of them, "
                "or a hub dataset name."
            ),
        ],
        hook: Annotated[
            list[str],
            typer.Option(
                help="TransformerLens hook name, e.g. blocks.7.hook_resid_post; repeat for several."
            ),
        ],
        out: Annotated[str, typer.Option(help="Store directory to create or resume.")],
        model: Annotated[
            str, typer.Option(help="Hugging Face hub name or local model directory.")
        ] = "gpt2",
        tokens: Annotated[
            int | None,
            typer.Option(
                help="Total tokens to harvest (held-out included); default: the whole dataset."
            ),
        ] = None,
        context_size: Annotated[int, typer.Option(help="Tokens per context (BOS included).")] = 128,
        batch_size: Annotated[int, typer.Option(help="Contexts per forward/backward pass.")] = 16,
        dtype: Annotated[
            str, typer.Option(help="Activation storage dtype: float16, bfloat16 or float32.")
        ] = "float16",
        gradients: Annotated[
            bool,
            typer.Option(
                "--gradients/--no-gradients", help="Store loss gradients (needs a backward pass)."
            ),
        ] = True,
        holdout_tokens: Annotated[
            int | None,
            typer.Option(
                help="Tokens held out for evaluation (the store's first contexts); "
                "default 5% of --tokens, or 65536."
            ),
        ] = None,
        device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
        seed: Annotated[
            int, typer.Option(help="Seed of the document order and the row shuffle.")
        ] = 0,
        split: Annotated[str, typer.Option(help="Split of a hub dataset.")] = "train",
        text_column: Annotated[
            str, typer.Option(help="Text field of .jsonl/.parquet/hub datasets.")
        ] = "text",
        autocast_bf16: Annotated[
            bool,
            typer.Option(
                "--autocast-bf16",
                help="Run the LM under bfloat16 autocast (faster on GPUs; activations and "
                "gradients then carry bfloat16 rounding, see docs/cli.md).",
            ),
        ] = False,
        rows_per_chunk: Annotated[int, typer.Option(help="Rows per Zarr chunk (advanced).")] = 8192,
        chunks_per_block: Annotated[
            int, typer.Option(help="Chunks per committed block (advanced).")
        ] = 16,
    ) -> None:
        """Run a causal LM over text; store activations, loss gradients, token ids and loss."""
        from saekit.cache_format.schema import ACTIVATION_DTYPES
        from saekit.errors import SaekitError
        from saekit.harvest import HarvestConfig, plan_harvest, run_harvest

        if dtype not in ACTIVATION_DTYPES:
            raise SaekitError(f"--dtype must be one of {', '.join(ACTIVATION_DTYPES)}, not {dtype}")
        config = HarvestConfig(
            model=model,
            dataset=dataset,
            hooks=tuple(hook),
            out=out,
            tokens=tokens,
            context_size=context_size,
            batch_size=batch_size,
            dtype=dtype,
            gradients=gradients,
            holdout_tokens=holdout_tokens,
            device=device,
            seed=seed,
            split=split,
            text_column=text_column,
            autocast_bf16=autocast_bf16,
            rows_per_chunk=rows_per_chunk,
            chunks_per_block=chunks_per_block,
            provenance={"command": invocation()},
        )
        with err_console.status("loading the model and checking inputs"):
            plan = plan_harvest(config)
        widths = ", ".join(f"{h} (d={s.d})" for h, s in plan.spec.hooks.items())
        console.print(f"harvesting {widths} from {config.model} on {plan.model.device} into {out}")
        with progress_bar(TokensPerSecond()) as bar:
            result = run_harvest(plan, HarvestBar(bar))
        note = " (the dataset ran out first)" if result.dataset_exhausted and tokens else ""
        console.print(f"store complete: {result.rows:,} tokens in {out}{note}")

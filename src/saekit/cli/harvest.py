"""`sae harvest`: run an LM over text and store activations, loss gradients, tokens and loss."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import typer
from rich.progress import ProgressColumn, Task
from rich.text import Text

from saekit.cli.common import (
    DEVICE_HELP,
    LateProgressBar,
    StorageOptions,
    console,
    err_console,
    invocation,
    parse_storage_options,
)


class TokensPerSecond(ProgressColumn):
    """Harvest speed in tokens per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} tok/s" if speed else "… tok/s", style="progress.data.speed")


class HarvestBar(LateProgressBar):
    """The harvest's progress bar: tokens, tokens/s, time left."""

    def __init__(self) -> None:
        super().__init__(TokensPerSecond())

    def start(self, total_rows: int | None, done_rows: int) -> None:
        self.add_task("harvesting tokens", total_rows, done_rows)

    def show_committed(self, total_rows: int | None, rows: int) -> None:
        """For sharded runs: the rows committed so far, polled from the store."""
        if self.task is None:
            self.start(total_rows, rows)
        self.bar.update(self.task, completed=rows)


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
                help="TransformerLens hook name, e.g. blocks.7.hook_resid_post, or pattern, e.g. "
                "'blocks.*.hook_mlp_out' or 'blocks.0-3.hook_resid_mid'; repeat for several."
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
            str,
            typer.Option(help="Activation storage dtype: float16, bfloat16, float32 or float8."),
        ] = "float16",
        gradients: Annotated[
            list[str] | None,
            typer.Option(
                help="Store loss gradients only at the harvested hooks this name or pattern "
                "gives; repeat for several (default: at every hook)."
            ),
        ] = None,
        no_gradients: Annotated[
            bool,
            typer.Option(
                "--no-gradients", help="Store no gradients (forward passes only, no backward)."
            ),
        ] = False,
        holdout_tokens: Annotated[
            int | None,
            typer.Option(
                help="Tokens held out for evaluation (the store's first contexts); "
                "default 5% of --tokens, or 65536."
            ),
        ] = None,
        device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
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
        shards: Annotated[
            int,
            typer.Option(
                help="Split the store into N shards harvested independently (needs --tokens); "
                "with --cluster they run as dask tasks, else one after another."
            ),
        ] = 1,
        shard: Annotated[
            str | None,
            typer.Option(help="Harvest only shard I of N (e.g. 3/8), for Slurm arrays and such."),
        ] = None,
        cluster: Annotated[
            str | None,
            typer.Option(
                help="dask.distributed scheduler address, or local[:W] to start a LocalCluster "
                "of W workers (default: one per GPU, else 2)."
            ),
        ] = None,
        storage_options: StorageOptions = None,
    ) -> None:
        """Run a causal LM over text; store activations, loss gradients, token ids and loss."""
        from saekit.base.errors import SaekitError
        from saekit.cache_format.schema import ACTIVATION_DTYPES
        from saekit.harvest import (
            HarvestConfig,
            harvest_shards,
            parse_shard,
            plan_harvest,
            run_harvest,
        )

        if dtype not in ACTIVATION_DTYPES:
            raise SaekitError(f"--dtype must be one of {', '.join(ACTIVATION_DTYPES)}, not {dtype}")
        if shard is not None and (shards != 1 or cluster):
            raise SaekitError(
                "--shard I/N harvests one shard here; do not combine it with --shards or --cluster"
            )
        if gradients and no_gradients:
            raise SaekitError(
                "--gradients PATTERN chooses where gradients are stored and --no-gradients "
                "stores none; give one of them"
            )
        if cluster and shards == 1:
            raise SaekitError("--cluster runs the shards of a sharded harvest; add --shards N")
        shard_index, shard_count = parse_shard(shard) if shard else (0, shards)
        config = HarvestConfig(
            model=model,
            dataset=dataset,
            hooks=tuple(hook),
            out=out,
            tokens=tokens,
            context_size=context_size,
            batch_size=batch_size,
            dtype=dtype,
            gradients=tuple(gradients) if gradients else not no_gradients,
            holdout_tokens=holdout_tokens,
            device=device,
            seed=seed,
            split=split,
            text_column=text_column,
            autocast_bf16=autocast_bf16,
            rows_per_chunk=rows_per_chunk,
            chunks_per_block=chunks_per_block,
            shards=shard_count,
            shard=shard_index,
            storage_options=parse_storage_options(storage_options),
            provenance={"command": invocation()},
        )
        with err_console.status("loading the model and checking inputs"):
            plan = plan_harvest(
                config if not cluster else dataclasses.replace(config, device="cpu")
            )
        widths = ", ".join(
            f"{h} (d={s.d}{'' if s.gradients else ', no gradients'})"
            for h, s in plan.spec.hooks.items()
        )
        where = f"cluster {cluster}" if cluster else str(plan.model.device)
        part = f"shard {shard_index} of {shard_count}" if shard else f"{shard_count} shard(s)"
        console.print(f"harvesting {widths} from {model} on {where} into {out} ({part})")
        with HarvestBar() as bar:
            if shard is None and shards > 1:
                capacity = plan.spec.layout.capacity_rows
                results = harvest_shards(
                    plan if not cluster else dataclasses.replace(plan, config=config),
                    cluster,
                    on_rows=lambda rows: bar.show_committed(capacity, rows),
                )
            else:
                results = [run_harvest(plan, bar)]
        rows = sum(r.rows for r in results)
        note = (
            " (the dataset ran out first)"
            if any(r.dataset_exhausted for r in results) and tokens
            else ""
        )
        console.print(f"harvest complete: {rows:,} tokens written to {out}{note}")

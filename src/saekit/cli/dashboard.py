"""`sae inspect`: latent dashboards (a static site) built from the store, without the LM."""

from __future__ import annotations

from typing import Annotated

import typer

from saekit.cli.common import StorageOptions, console, parse_storage_options
from saekit.cli.evaluate import EvalBar


def register(app: typer.Typer) -> None:
    @app.command(name="inspect")
    def inspect_saes(
        saes: Annotated[
            list[str],
            typer.Argument(help="Runs (all their SAEs) or SAE directories (RUN/saes/NAME)."),
        ],
        out: Annotated[str, typer.Option(help="Directory of the site (index.html and data/).")],
        store: Annotated[
            str | None,
            typer.Option(help="Store path or URL (default: the store the SAEs were trained on)."),
        ] = None,
        latents: Annotated[
            str, typer.Option(help="all, N (the first N latents) or a list i,j,k (one latent: i,).")
        ] = "all",
        tokens: Annotated[
            int | None, typer.Option(help="Rows to read at most (default: the whole split).")
        ] = None,
        split: Annotated[str, typer.Option(help="holdout, train or all.")] = "holdout",
        model: Annotated[
            str | None,
            typer.Option(help="The LM's tokenizer and unembedding (default: the store's model)."),
        ] = None,
        device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
        batch_size: Annotated[int, typer.Option(help="Rows per SAE encode.")] = 4096,
        top: Annotated[int, typer.Option(help="Top activations shown per latent.")] = 20,
        per_band: Annotated[
            int, typer.Option(help="Random firings shown per activation decile.")
        ] = 3,
        before: Annotated[int, typer.Option(help="Context tokens before the firing one.")] = 16,
        after: Annotated[int, typer.Option(help="Context tokens after the firing one.")] = 4,
        seed: Annotated[int, typer.Option(help="Seed of the random samples.")] = 0,
        allow_other_model: Annotated[
            bool,
            typer.Option(
                "--allow-other-model",
                help="Inspect SAEs trained on another model's activations than the store's, or "
                "with a --model whose weights or tokenizer differ from the store's (the site's "
                "inspect.json and this command's output say so).",
            ),
        ] = False,
        storage_options: StorageOptions = None,
    ) -> None:
        """Build latent dashboards: density, histograms, top and typical contexts, logit effects."""
        from saekit.dashboard import InspectRequest, prepare_dashboard

        request = InspectRequest(
            saes=tuple(saes),
            out=out,
            store=store,
            storage_options=parse_storage_options(storage_options),
            latents=latents,
            tokens=tokens,
            split=split,
            model=model,
            device=device,
            batch_size=batch_size,
            top=top,
            per_band=per_band,
            before=before,
            after=after,
            seed=seed,
            allow_other_model=allow_other_model,
        )
        with EvalBar() as bar:
            dashboard = prepare_dashboard(request)
            index = dashboard.build(bar)
        for warning in dashboard.warnings:
            console.print(f"warning: {warning}", markup=False)
        console.print(f"dashboards: {index}")

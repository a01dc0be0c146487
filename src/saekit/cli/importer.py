"""`sae import`: another library's saved SAE as a saekit SAE in an import run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from saekit.cli.common import console


def register(app: typer.Typer) -> None:
    @app.command(name="import")
    def import_(
        source: Annotated[
            Path,
            typer.Argument(
                help="A saved SAE folder of SAELens (cfg.json + sae_weights.safetensors), "
                "sparsify (cfg.json + sae.safetensors) or dictionary_learning (ae.pt + "
                "config.json)."
            ),
        ],
        out: Annotated[Path, typer.Option(help="Import run: the SAE is written to OUT/saes/NAME.")],
        hook: Annotated[
            str | None,
            typer.Option(help="Store hook it reads (default: mapped from its library's name)."),
        ] = None,
        target: Annotated[
            str | None,
            typer.Option(
                help="Store hook a transcoder predicts (default: mapped from its library's "
                "name); for dictionary_learning it makes the import a transcoder."
            ),
        ] = None,
        name: Annotated[
            str | None,
            typer.Option(help="Name of the saved SAE (default: LIBRARY-ARCHITECTURE-LATENTS)."),
        ] = None,
    ) -> None:
        """Import an SAE saved by SAELens, sparsify or dictionary_learning."""
        from saekit.train import import_sae, load_sae

        directory = import_sae(source, out, hook, target, name)
        sae = load_sae(directory)
        origin = sae.cfg.imported_from
        console.print(
            f"imported {origin['library']} {origin['architecture']} as {sae.cfg.variant} "
            f"({sae.shape.describe()}, {sae.d_sae} latents): {directory}",
            markup=False,
        )

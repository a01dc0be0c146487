"""`sae export`: saved dictionaries assembled into another library's format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from saekit.cli.common import console


def register(app: typer.Typer) -> None:
    @app.command()
    def export(
        saes: Annotated[
            list[str],
            typer.Argument(
                help="Runs (all their SAEs) or SAE directories: one transcoder a layer."
            ),
        ],
        circuit_tracer: Annotated[
            Path,
            typer.Option(
                "--circuit-tracer",
                help="Directory of the circuit-tracer transcoder set (config.yaml, layer_<i>).",
            ),
        ],
    ) -> None:
        """Assemble per-layer transcoders into a circuit-tracer transcoder set."""
        from saekit.base.outputs import TRANSCODER_SET, check_output_dir
        from saekit.train import export_transcoder_set, is_transcoder_set, run_of, sae_directories

        directories = [d for path in saes for d in sae_directories(path)]
        runs = [run_of(d) or d for d in directories]
        check_output_dir(circuit_tracer, runs, "export", TRANSCODER_SET, is_transcoder_set)
        config = export_transcoder_set(directories, circuit_tracer)
        console.print(
            f"circuit-tracer transcoder set: {config.parent} (load it by its absolute path)"
        )

"""`sae harvest`: run an LM over text and store activations and loss gradients."""

import typer

from saekit.cli.common import not_implemented


def register(app: typer.Typer) -> None:
    @app.command(
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        help="Run a causal LM over a text dataset and store activations, gradients, tokens and "
        "per-token loss in a Zarr store. (Not implemented yet.)",
    )
    def harvest() -> None:
        not_implemented("harvest", "the harvest issue")

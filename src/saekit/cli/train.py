"""`sae train`: fit SAE variants on rows streamed from a store."""

import typer

from saekit.cli.common import not_implemented


def register(app: typer.Typer) -> None:
    @app.command(
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        help="Train SAEs on shuffled rows streamed from a store. (Not implemented yet.)",
    )
    def train() -> None:
        not_implemented("train", "the train issue")

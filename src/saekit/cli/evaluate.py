"""`sae eval`: offline and online evaluation of trained SAEs."""

import typer

from saekit.cli.common import not_implemented


def register(app: typer.Typer) -> None:
    @app.command(
        name="eval",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        help="Evaluate trained SAEs on a store's held-out rows and spliced into the LM. "
        "(Not implemented yet.)",
    )
    def evaluate() -> None:
        not_implemented("eval", "the eval issue")

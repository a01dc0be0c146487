"""Pieces shared by the CLI commands."""

from __future__ import annotations

import json
import shlex
from typing import Annotated, Any, Self

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from saekit.base.errors import SaekitError

# Messages are never broken into lines at a width: a terminal wraps them itself, and scripts
# and logs reading a pipe get each message whole. Tables go through `print_table`. stderr keeps
# rich's fitting for its progress bars; messages printed there pass `soft_wrap=True`.
console = Console(soft_wrap=True)
err_console = Console(stderr=True)
PIPED_TABLE_WIDTH = 1000  # wide enough for any table saekit prints: nothing is cut or folded
_invocation: list[str] = []


def set_invocation(argv: list[str]) -> None:
    """Remember the arguments `sae` was called with (for provenance records)."""
    _invocation[:] = argv


def invocation() -> str:
    """The command line of this run, e.g. `sae harvest --model gpt2 ...`."""
    return shlex.join(["sae", *_invocation])


def print_table(table: Table) -> None:
    """Print a table on stdout: its title as a message line, then the table fitted to a
    terminal's width, or at its natural width (no cell cut or folded) for a pipe or a file."""
    if table.title is not None:
        console.print(table.title, style="table.title", markup=False)
        table.title = None
    if console.is_terminal:
        console.print(table, soft_wrap=False)
    else:
        Console(file=console.file, width=PIPED_TABLE_WIDTH).print(table)


def progress_bar(*extra_columns) -> Progress:
    """A rich progress bar on stderr: description, bar, count, extra columns, elapsed and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=False,
    )


class BarOwner:
    """Owns a progress bar that is started with its first task (so that an error found before
    any work starts is printed alone, as one line) and stopped on leaving the `with` block
    (vanishing after a failure)."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.task: Any = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        stop_bar(self.bar, started=self.task is not None, vanish=exc_info[0] is not None)


class LateProgressBar(BarOwner):
    """A progress bar shown from its first task on."""

    def __init__(self, *extra_columns) -> None:
        super().__init__(progress_bar(*extra_columns))

    def add_task(self, description: str, total: int | None, completed: int = 0) -> None:
        if self.task is None:
            self.bar.start()
        self.task = self.bar.add_task(description, total=total, completed=completed)

    def advance(self, n: int) -> None:
        self.bar.advance(self.task, n)


def stop_bar(bar: Progress, *, started: bool = True, vanish: bool = False) -> None:
    """Stop a progress bar that was started; a vanishing one leaves nothing on stderr (after a
    failure, so that the error is the one line left)."""
    if not started:
        return  # an unstarted bar's stop() would print an empty line
    if vanish:  # Progress.stop() would also print an empty line on a pipe
        bar.live.transient = True
        bar.live.stop()
    else:
        bar.stop()


def parse_storage_options(text: str | None) -> dict[str, Any] | None:
    """--storage-options takes a JSON object passed to fsspec (e.g. endpoint, credentials)."""
    if not text:
        return None
    try:
        options = json.loads(text)
    except json.JSONDecodeError:
        raise SaekitError(
            "--storage-options must be a JSON object, e.g. '{\"anon\": true}'"
        ) from None
    if not isinstance(options, dict):
        raise SaekitError("--storage-options must be a JSON object, e.g. '{\"anon\": true}'")
    return options


StoreArgument = Annotated[str, typer.Argument(help="Store path or fsspec URL.")]
StorageOptions = Annotated[
    str | None,
    typer.Option(help="JSON object of fsspec options for remote stores, e.g. an endpoint."),
]
WandbProject = Annotated[
    str | None,
    typer.Option(
        "--wandb",
        metavar="PROJECT",
        help="Also log to this Weights & Biases project (saekit[wandb]; WANDB_MODE=offline "
        "writes it locally for wandb sync).",
    ),
]
TensorboardDir = Annotated[
    str | None,
    typer.Option(
        "--tensorboard",
        metavar="DIR",
        help="Also log to TensorBoard event files in DIR/<run name> (saekit[tensorboard]).",
    ),
]
DEVICE_HELP = "auto (the current GPU if any, else cpu), cpu, cuda (the current GPU) or cuda:N."

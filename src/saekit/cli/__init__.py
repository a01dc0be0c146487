"""The `sae` command line: parse, validate, call the library, print.

Every command lives in its own module; this one assembles them and turns errors into one line on
stderr with the documented exit code: 0 success, 1 damaged data, 2 bad input, 3 an internal error
(a bug: the line says so; `--debug` or `SAEKIT_DEBUG=1` adds the traceback), 130 interrupted.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from saekit.base.errors import MACHINE_ERRNOS, SaekitError, write_error
from saekit.cli import (
    dashboard,
    demo,
    evaluate,
    export,
    finetune,
    harvest,
    importer,
    recipe,
    registry,
    store,
    train,
)
from saekit.cli.common import set_invocation

INTERNAL_ERROR_EXIT = 3

app = typer.Typer(
    name="sae",
    help="Harvest LM activations and loss gradients, train sparse autoencoders, evaluate them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (
    harvest,
    train,
    finetune,
    evaluate,
    dashboard,
    recipe,
    export,
    importer,
    registry,
    store,
    demo,
):
    module.register(app)


def _fail(message: str, exit_code: int) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(exit_code)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> None:
    """Console entry point of `sae`."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("SAEKIT_DEBUG", "") not in ("", "0")
    argv = [arg for arg in argv if arg != "--debug"]
    set_invocation(argv)
    try:
        code = app(args=argv, prog_name="sae", standalone_mode=False)
    except SaekitError as error:
        _fail(_one_line(str(error)), error.exit_code)
    except typer.TyperException as error:  # usage errors found by the parser
        message = error.format_message()
        if message:
            command = getattr(getattr(error, "ctx", None), "command_path", "sae")
            _fail(f"{message} (see '{command} --help')", 2)
        code = error.exit_code
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", 130)
    except OSError as error:  # the machine's state, not a bug: a full disk, permissions, ...
        if error.errno not in MACHINE_ERRNOS:
            _internal_error(error, debug)
        where = error.filename if error.filename is not None else "a file"
        _fail(_one_line(str(write_error(where, error, "use"))), 2)
    except MemoryError:
        _fail(
            "out of memory; use smaller settings (--batch-size, latents=..., --tokens) or a "
            "machine with more memory",
            2,
        )
    except Exception as error:  # a safety net: every failure a user can cause has its own line
        _internal_error(error, debug)
    sys.exit(code or 0)


def _internal_error(error: Exception, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    _fail(
        f"internal error: {type(error).__name__}: {_one_line(str(error))}; please report "
        "it with the command (add --debug for the traceback)",
        INTERNAL_ERROR_EXIT,
    )

"""Where a report may be written: never into a run or a store (links resolved), and never over
a folder that holds something else than what the command itself writes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from saekit.cache_format.location import refuse_inside_store
from saekit.errors import SaekitError


def check_output_dir(
    out: str | Path,
    runs: Iterable[Path],
    command: str,
    kind: str,
    is_kind: Callable[[Path], bool],
) -> None:
    """Refuse `--out` when it is or lies inside one of `runs` or inside any store, or when it
    exists and is neither empty nor a `kind` (as `is_kind` tells) that `command` wrote."""
    resolved = Path(out).resolve()
    for run in runs:
        if resolved == run.resolve() or run.resolve() in resolved.parents:
            raise SaekitError(
                f"--out {out} is inside run {run}; {command} never writes into a run, choose "
                "another directory"
            )
    refuse_inside_store(out, command)
    if resolved.exists() and (
        not resolved.is_dir() or (any(resolved.iterdir()) and not is_kind(resolved))
    ):
        raise SaekitError(f"--out {out} exists and is not {kind}; choose a new directory")

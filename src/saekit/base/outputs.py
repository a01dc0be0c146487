"""Where saekit may write: never into a store (links resolved) or a run, and never over a folder
that holds something else than what the command itself writes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from saekit.base.errors import SaekitError
from saekit.base.locations import local_path

STORE_FORMAT = "saekit.activation-store"  # the `format` attribute of a store's root zarr.json


def enclosing_store(location: str | Path) -> Path | None:
    """The saekit store a local path is or lies inside, symbolic links resolved, or None: the
    nearest of the path and its parents whose `zarr.json` names the saekit format."""
    real = Path(os.path.realpath(local_path(location)))
    for candidate in (real, *real.parents):
        try:
            meta = json.loads((candidate / "zarr.json").read_bytes())
        except (OSError, ValueError):
            continue
        attributes = meta.get("attributes") if isinstance(meta, dict) else None
        if isinstance(attributes, dict) and attributes.get("format") == STORE_FORMAT:
            return candidate
    return None


def refuse_inside_store(out: str | Path, command: str) -> None:
    """Refuse an output (`--out`) that is or lies inside a store, symbolic links resolved: a
    store is changed by its writer only."""
    store = enclosing_store(out)
    if store is not None:
        raise SaekitError(
            f"--out {out} lies inside the store {store}; {command} never writes into a store, "
            "choose another directory"
        )


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

"""The recipe directory DIR: what it holds, the record that says so, and where each part lives.

    DIR/recipe.json                      what DIR holds: preset, model, store, hook, timings
    DIR/store.zarr                       the harvested store (unless --store)
    DIR/<recipe>/runs/<stage>-s<seed>/   training runs (many SAEs per data pass)
    DIR/<recipe>/evals/<run>.json        every evaluated row of that run (the cache resume reads)
    DIR/report.md, report.json, figures/

A DIR is new, empty, or holds recipes run with the same settings (then they are resumed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saekit import __version__
from saekit.base.atomic import write_json
from saekit.base.errors import SaekitError
from saekit.base.outputs import (
    KINDS,
    RECIPE_DIR,
    make_directory,
    marker_kind,
    probe_writable,
    refuse_inside_store,
    refuse_links,
    write_marker,
)
from saekit.recipes.declarations import Recipe
from saekit.recipes.presets import Preset

RECORD_FILE = "recipe.json"
RECORD_FORMAT = "saekit.recipe"
STORE_DIR = "store.zarr"
COMPARED = ("preset", "model", "store", "hook")  # settings a resumed DIR must repeat
PARTS = ("runs", "evals")  # the folders of each recipe in DIR


@dataclass(frozen=True)
class Workspace:
    """Paths inside DIR."""

    root: Path

    @property
    def record_file(self) -> Path:
        return self.root / RECORD_FILE

    @property
    def store(self) -> Path:
        return self.root / STORE_DIR

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    def run(self, recipe: str, run_name: str) -> Path:
        return self.root / recipe / "runs" / run_name

    def runs(self, recipe: str) -> dict[str, Path]:
        """The recipe's run directories, by run name."""
        runs = self.root / recipe / "runs"
        return {p.name: p for p in sorted(runs.iterdir())} if runs.is_dir() else {}

    def evals(self, recipe: str, run_name: str) -> Path:
        return self.root / recipe / "evals" / f"{run_name}.json"

    def cached_rows(self, recipe: str) -> list[dict[str, Any]]:
        """Every evaluated row of the recipe, run by run."""
        rows = []
        for cache in sorted((self.root / recipe / "evals").glob("*.json")):
            rows += self.read_cache(cache).values()
        return rows

    def read_cache(self, cache: Path) -> dict[str, dict[str, Any]]:
        """The rows cached in `cache` by label (none when it does not exist yet); a damaged
        cache is refused in one line."""
        try:
            rows = json.loads(cache.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            rows = None
        if not isinstance(rows, dict) or not all(isinstance(r, dict) for r in rows.values()):
            raise SaekitError(
                f"{cache} is not a cache of evaluated rows (damaged); delete it to evaluate that "
                "run again"
            )
        return rows


def preset_record(preset: Preset, recipes: list[Recipe]) -> dict[str, Any]:
    """The preset as recipe.json records it: the shared scale and each recipe's grid."""
    scale = {
        f.name: getattr(preset, f.name) for f in dataclasses.fields(preset) if f.name != "grids"
    }
    grids = {r.name: dataclasses.asdict(r.grid(preset)) for r in recipes}
    return json.loads(json.dumps({**scale, "grids": grids}))


def new_record(
    preset: Preset,
    recipes: list[Recipe],
    model: str,
    dataset: str | None,
    store: str | None,
    hook: str,
) -> dict[str, Any]:
    """The settings that define DIR's results, as JSON values (what recipe.json holds)."""
    return {
        "format": RECORD_FORMAT,
        "saekit_version": __version__,
        "preset": preset_record(preset, recipes),
        "model": model,
        "dataset": dataset,
        "store": store,
        "hook": hook,
    }


def check_workspace(out: Path, record: dict[str, Any]) -> None:
    """DIR lies in no store (links resolved), is not a link, can be written, and is new, empty,
    or holds recipes of the same settings (a grid recorded for a recipe must be this preset's
    grid for it): its `recipe.json` records them, and, from this saekit on, saekit's marker
    says it wrote DIR; a directory another kind of output's marker claims is refused."""
    refuse_inside_store(out, "recipe")
    if out.is_symlink():
        raise SaekitError(
            f"--out {out} is a symbolic link; saekit never writes through links, give the "
            "directory itself"
        )
    if out.exists() and not out.is_dir():
        raise SaekitError(f"--out {out} is a file; choose a directory")
    probe_writable(out)
    if not out.exists() or not any(out.iterdir()):
        return
    kind = marker_kind(out)
    if kind not in (None, RECIPE_DIR):
        raise SaekitError(f"--out {out} holds {KINDS[kind]}, not recipe results")
    stored = _read_record(out)
    if stored is None:
        raise SaekitError(
            f"--out {out} is not empty and holds no recipe results; choose a new directory"
        )
    changed = [
        key for key in COMPARED if key not in ("store", "preset") and stored.get(key) != record[key]
    ]
    if stored.get("store") != record["store"] and record["store"] is not None:
        changed.append("store")
    if not _same_preset(stored.get("preset"), record["preset"]):
        changed.append("preset")
    if changed:
        raise SaekitError(
            f"--out {out} holds recipes run with another {', '.join(changed)}; repeat those "
            "settings to resume them, or choose a new directory"
        )
    refuse_links(
        out, [STORE_DIR, "figures", *(f"{p.name}/{d}" for p in out.iterdir() for d in PARTS)]
    )


def _same_preset(stored: Any, wanted: dict[str, Any]) -> bool:
    """The same scale, and the same grid for every recipe both record."""
    if not isinstance(stored, dict) or not isinstance(stored.get("grids"), dict):
        return False
    scale = {key: value for key, value in wanted.items() if key != "grids"}
    if {key: value for key, value in stored.items() if key != "grids"} != scale:
        return False
    both = set(stored["grids"]) & set(wanted["grids"])
    return all(stored["grids"][name] == wanted["grids"][name] for name in both)


def _read_record(out: Path) -> dict[str, Any] | None:
    """DIR's record, None when there is none (or it is not a recipe record); a record whose
    fields are damaged is refused in one line."""
    path = out / RECORD_FILE
    try:
        stored = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise SaekitError(f"{path} cannot be read as JSON; {RECORD_DAMAGED}") from None
    if not isinstance(stored, dict) or stored.get("format") != RECORD_FORMAT:
        return None
    for key, expected, ok in _RECORD_FIELDS:
        if key in stored and not ok(stored[key]):
            raise SaekitError(
                f"{path}: {key} must be {expected}, not {_shown(stored[key])}; {RECORD_DAMAGED}"
            )
    return stored


RECORD_DAMAGED = "the recipe directory is damaged: delete it, or choose a new --out"


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_timings(value: Any) -> bool:
    """{key: seconds or {key: seconds}}, as `timed` records them."""

    def seconds(x: Any) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool)

    return isinstance(value, dict) and all(
        seconds(v) or (isinstance(v, dict) and all(seconds(w) for w in v.values()))
        for v in value.values()
    )


_RECORD_FIELDS = (
    ("preset", "an object with an object of grids", lambda v: isinstance(v, dict)
     and isinstance(v.get("grids", {}), dict)),
    ("model", "a string", lambda v: isinstance(v, str)),
    ("dataset", "a string or null", lambda v: v is None or isinstance(v, str)),
    ("store", "a string or null", lambda v: v is None or isinstance(v, str)),
    ("hook", "a string", lambda v: isinstance(v, str)),
    ("recipes", "a list of recipe names", lambda v: isinstance(v, list)
     and all(isinstance(x, str) for x in v)),
    ("timings", "an object of durations", _is_timings),
)  # fmt: skip


def open_record(workspace: Workspace, record: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """Create DIR, merge this call's record into the one it holds (the recipes done so far, in
    `order`; the grids of every recipe recorded) and write it; mark DIR as saekit's."""
    make_directory(workspace.root, workspace.root)
    write_marker(workspace.root, RECIPE_DIR)
    stored = _read_record(workspace.root) or {}
    merged = {**stored, **{k: v for k, v in record.items() if v is not None or k not in stored}}
    grids = {**stored.get("preset", {}).get("grids", {}), **record["preset"]["grids"]}
    merged["preset"] = {**record["preset"], "grids": grids}
    done = {*stored.get("recipes", []), *record["preset"]["grids"]}
    merged["recipes"] = [name for name in order if name in done]
    write_json(workspace.record_file, merged)
    return merged


@contextlib.contextmanager
def timed(timings: dict[str, Any], key: str) -> Iterator[None]:
    """Add the wall time of the block to `timings[key]` (seconds, summed over calls)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start

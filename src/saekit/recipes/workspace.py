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
from saekit.base.outputs import refuse_inside_store
from saekit.recipes.declarations import Recipe
from saekit.recipes.presets import Preset

RECORD_FILE = "recipe.json"
RECORD_FORMAT = "saekit.recipe"
STORE_DIR = "store.zarr"
COMPARED = ("preset", "model", "store", "hook")  # settings a resumed DIR must repeat


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
            rows += json.loads(cache.read_text()).values()
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
    """DIR lies in no store (links resolved) and is new, empty, or holds recipes of the same
    settings (a grid recorded for a recipe must be this preset's grid for it)."""
    refuse_inside_store(out, "recipe")
    if out.exists() and not out.is_dir():
        raise SaekitError(f"--out {out} is a file; choose a directory")
    if not out.exists() or not any(out.iterdir()):
        return
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
    try:
        stored = json.loads((out / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) else None


def open_record(workspace: Workspace, record: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """Create DIR, merge this call's record into the one it holds (the recipes done so far, in
    `order`; the grids of every recipe recorded) and write it."""
    workspace.root.mkdir(parents=True, exist_ok=True)
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

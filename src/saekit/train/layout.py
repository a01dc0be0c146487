"""Where a run keeps its saved SAEs, and how a command-line argument names them.

    RUN/saes/<name>/cfg.json         one saved SAE per directory (see `export.py`)

An argument naming SAEs is a run (all of `RUN/saes/*`), one SAE directory, the URL of a
published SAE (`sae publish`; fetched into a temporary directory), or an SAE folder saved by
another library (imported on the fly by `load_sae`; `sae import` saves it as a run).
"""

from __future__ import annotations

from pathlib import Path

from saekit.base.errors import SaekitError
from saekit.base.locations import resolve_recorded_path
from saekit.train import importers
from saekit.train.export import CFG_FILE, local_sae
from saekit.train.sae_config import SAEConfig

SAES_DIR = "saes"


def sae_directory(run: Path, name: str) -> Path:
    """Where the run saves the SAE called `name`."""
    return run / SAES_DIR / name


def saved_saes(run: Path) -> list[Path]:
    """The directories of the run's saved SAEs (those with a cfg.json), by name."""
    return sorted(p for p in (run / SAES_DIR).glob("*") if (p / CFG_FILE).is_file())


def trained_saes(run: Path) -> list[Path]:
    """The directories of the SAEs the run's own training saved, by name: those of
    `saved_saes` but the fine-tuned ones (`sae finetune` adds those to a run)."""
    return [p for p in saved_saes(run) if not SAEConfig.read(p / CFG_FILE).finetuned]


def sae_directories(path: str | Path, storage_options: dict | None = None) -> list[Path]:
    """The SAE directories an argument names: a run (all of RUN/saes/*), one SAE, a published
    SAE (its URL, or its folder on a shared disk), or another library's SAE folder."""
    directory = local_sae(path, storage_options)
    if (directory / CFG_FILE).is_file() or importers.foreign_library(directory) is not None:
        return [directory]
    saes = saved_saes(directory)
    if not saes:
        raise SaekitError(
            f"{path} is neither a run nor a saved SAE; give a directory written by sae train or "
            f"sae import (RUN or RUN/saes/NAME), or a saved SAE folder of {importers.FORMATS}"
        )
    return saes


def run_of(directory: Path) -> Path | None:
    """The run a saved SAE's directory belongs to (RUN for RUN/saes/NAME), or None."""
    return directory.parent.parent if directory.parent.name == SAES_DIR else None


def recorded_store(sae_dir: Path) -> str:
    """The store a saved SAE's `cfg.json` says it was trained on (a relative local path of an
    older run is looked for beside its run)."""
    cfg_file = sae_dir / CFG_FILE
    library = importers.foreign_library(sae_dir)
    if library is not None:
        raise SaekitError(
            f"{sae_dir} was saved by {library.LIBRARY} and names no store; give one with --store"
        )
    location = SAEConfig.read(cfg_file).store.get("location")
    if not isinstance(location, str) or not location:
        raise SaekitError(f"{cfg_file} names no store; give one with --store")
    return resolve_recorded_path(location, run_of(sae_dir) or sae_dir)

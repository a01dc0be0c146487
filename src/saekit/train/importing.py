"""`sae import`: another library's saved SAE written as a saekit SAE, `RUN/saes/<name>/`.

The import run holds saved SAEs only (no training state), so `sae eval`, `sae inspect` and the
recipes read it like any run; its SAEs name no store (evaluate them with `--store`).
"""

from __future__ import annotations

from pathlib import Path

from saekit.base.errors import SaekitError
from saekit.base.outputs import probe_writable, refuse_inside_store
from saekit.train import importers
from saekit.train.export import save_sae
from saekit.train.layout import SAES_DIR, sae_directory


def import_sae(
    source: Path,
    run: Path,
    hook: str | None = None,
    target: str | None = None,
    name: str | None = None,
) -> Path:
    """Import the folder `source` into `run` (created if new); return the SAE's directory.
    Refused in one line, before anything is written: a folder of no library saekit imports,
    a dictionary it cannot import faithfully, a run that holds anything but imported SAEs, a
    name already taken."""
    refuse_inside_store(run, "import")
    if run.is_symlink():
        raise SaekitError(
            f"--out {run} is a symbolic link; saekit never writes through links, give the "
            "directory itself"
        )
    if run.exists() and (not run.is_dir() or any(p.name != SAES_DIR for p in run.iterdir())):
        raise SaekitError(
            f"--out {run} exists and is not an import run (a directory holding only saes/); "
            "choose a new directory"
        )
    probe_writable(run)
    foreign = importers.read_foreign(source, hook, target)
    sae, cfg = importers.build(foreign, name)
    directory = sae_directory(run, cfg.name)
    if directory.exists():
        raise SaekitError(f"{directory} exists; choose another --name")
    save_sae(sae, directory, cfg)
    return directory

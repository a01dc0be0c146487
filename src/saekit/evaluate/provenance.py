"""Where the inputs of a report come from: the store an SAE was trained on, the model a store
was harvested with, and the provenance block every report (eval's, inspect's) starts with."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from saekit import __version__
from saekit.cache_format import ActivationStore
from saekit.cache_format.location import is_local, local_path, resolve_recorded_path
from saekit.errors import SaekitError
from saekit.train.sae_config import SAEConfig


def recorded_store(cfg_file: Path, run: Path) -> str:
    """The store a saved SAE's `cfg.json` says it was trained on (a relative local path of an
    older run is looked for beside the run)."""
    location = SAEConfig.read(cfg_file).store.get("location")
    if not isinstance(location, str) or not location:
        raise SaekitError(f"{cfg_file} names no store; give one with --store")
    return resolve_recorded_path(location, run)


def recorded_model(store: ActivationStore) -> str:
    """The model the store names (a relative local path of an older store is looked for beside
    the store)."""
    recorded = store.spec.identity.get("model")
    if not isinstance(recorded, str) or not recorded:
        raise SaekitError(f"store {store.location} names no model; give one with --model")
    if not is_local(store.location):
        return recorded
    return resolve_recorded_path(recorded, local_path(store.location))


def report_provenance(store: ActivationStore) -> dict:
    """The head of a report: which saekit wrote it, when, and from which store."""
    return {
        "saekit_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "store": {
            "location": store.location,
            "identity": store.spec.identity,
            "holdout_rows": store.n_rows("holdout"),
            "rows": store.n_rows_committed,
        },
    }

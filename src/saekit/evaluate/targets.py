"""What gets evaluated: saved SAEs, each in the inference modes its variant has.

A *target* is one row of a report: an SAE in one mode. The variant says which modes it has and
computes codes in each (`saekit.train.modes` names them); nothing here knows a variant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.base.errors import SaekitError
from saekit.base.locations import is_local, local_path
from saekit.cache_format import ActivationStore
from saekit.train import (
    CFG_FILE,
    SAE,
    Code,
    SAEConfig,
    load_sae,
    modes,
    recorded_store,
    saved_saes,
)

DEFAULT_BATCH_ROWS = 4096


@dataclass
class Target:
    """One row of a report: an SAE (loaded with `load_sae`, so `sae.cfg` is set) in one mode."""

    run: str
    sae: SAE
    mode: str

    @property
    def name(self) -> str:
        return self.sae.cfg.name

    @property
    def variant(self) -> str:
        return self.sae.cfg.variant

    @property
    def hook(self) -> str:
        return self.sae.cfg.hook

    @property
    def label(self) -> str:
        return self.name if self.mode == modes.INFERENCE else f"{self.name} [{self.mode}]"

    @property
    def needs_gradients(self) -> bool:
        return self.mode in modes.USES_GRADIENTS

    @property
    def batch_dependent(self) -> bool:
        return self.mode in modes.BATCH_DEPENDENT

    @property
    def batch_rows(self) -> int:
        """Rows per selection: the training batch size for batch-dependent modes (else any
        batching gives the same codes; 4096 then)."""
        if self.batch_dependent:
            return int(self.sae.cfg.training.get("batch_size", DEFAULT_BATCH_ROWS))
        return DEFAULT_BATCH_ROWS

    def code(self, x_BD: Tensor, g_BD: Tensor | None = None) -> Code:
        """Codes of raw activations in this target's mode, sparse where the variant makes them
        sparse (`g_BD` is read by modes that use gradients only)."""
        gradients_BD = g_BD if self.needs_gradients else None
        return self.sae.activation.code_in(self.mode, self.sae, x_BD, gradients_BD)

    def reconstruct(self, x_BD: Tensor, g_BD: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(codes f, reconstruction x̂) of raw activations in this target's mode."""
        f_BF = self.code(x_BD, g_BD).to_dense()
        return f_BF, self.sae.decode(f_BF)


def targets_of(run: str, sae: SAE, diagnostic: bool = False) -> list[Target]:
    """The SAE in each of its variant's modes (`diagnostic`: also those that only explain)."""
    variant_modes = sae.activation.modes(sae.activation.options, diagnostic)
    return [Target(run, sae, mode) for mode in variant_modes]


def inspection_target(run: str, sae: SAE, store: ActivationStore) -> Target:
    """The SAE in the mode it is used in (its variant's first), or in its first mode that needs
    no gradients when the store has none at its hook."""
    targets = targets_of(run, sae)
    if not store.has_gradients(sae.cfg.hook):
        targets = [t for t in targets if not t.needs_gradients]
    return targets[0]


def load_targets(
    runs: list[str],
    store: ActivationStore,
    device: torch.device,
    allow_other_model: bool = False,
    warnings: list[str] | None = None,
) -> list[Target]:
    """Every SAE under `RUN/saes/`, checked against the store (`check_provenance`; the warnings
    of what `allow_other_model` let through are added to `warnings`), in every mode."""
    targets = []
    for run in runs:
        sae_dirs = saved_saes(Path(run))
        if not sae_dirs:
            raise SaekitError(
                f"{run} holds no trained SAEs (no saes/<name>/cfg.json); give a "
                "directory written by sae train"
            )
        for sae_dir in sae_dirs:
            sae = load_sae(sae_dir, device)
            found = check_provenance(sae, store, sae_dir, allow_other_model)
            if warnings is not None:
                warnings += found
            targets += targets_of(Path(run).name, sae)
    return targets


def check_against_store(sae: SAE, store: ActivationStore, where: Path) -> None:
    """Refuse an SAE whose hook the store lacks or whose input width differs from the store's."""
    cfg = sae.cfg
    if cfg.hook not in store.spec.hooks:
        raise SaekitError(
            f"SAE {where} was trained on hook {cfg.hook}, which store "
            f"{store.location} lacks (it has {store.hooks})"
        )
    width = store.spec.hooks[cfg.hook].d
    if cfg.d_in != width:
        raise SaekitError(
            f"SAE {where} takes d_in={cfg.d_in} but store {store.location} has "
            f"d={width} at {cfg.hook}"
        )


# What must agree between the store an SAE was trained on and a store it is measured on (where
# both record it): the LM that made the activations, its tokenizer and vocabulary, the context.
PROVENANCE_KEYS = ("weights_fingerprint", "tokenizer_fingerprint", "vocab_size", "context_size")


def provenance_differences(trained: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """How the identity of a store an SAE was trained on differs from another store's, in what
    makes the activations the same kind (the dataset may differ). Without weights fingerprints
    on both sides, the models' names and revisions are compared instead."""
    keys = list(PROVENANCE_KEYS)
    if not (trained.get("weights_fingerprint") and here.get("weights_fingerprint")):
        keys += ["model", "model_revision"]
    return [
        f"{key} (trained on: {trained[key]}, this store: {here[key]})"
        for key in keys
        if trained.get(key) is not None and here.get(key) is not None and trained[key] != here[key]
    ]


def check_provenance(
    sae: SAE, store: ActivationStore, where: Path, allow_other_model: bool = False
) -> list[str]:
    """The one check of an SAE meeting a store (eval, inspect, recipes): the hook and width
    always (`check_against_store`); the model, tokenizer, vocabulary and context size the store
    it was trained on recorded, unless `allow_other_model`, which returns the warning a report
    must then carry."""
    check_against_store(sae, store, where)
    trained = sae.cfg.store.get("identity")
    trained = trained if isinstance(trained, dict) else {}
    differences = provenance_differences(trained, store.spec.identity)
    if not differences:
        return []
    if not allow_other_model:
        raise SaekitError(
            f"SAE {where} was trained on activations of another model than store "
            f"{store.location} holds: {'; '.join(differences)}; give the store it was trained "
            "on with --store, or pass --allow-other-model to measure it on this one (the output "
            "then says so)"
        )
    return [
        f"SAE {where} is measured on store {store.location}, whose activations come from "
        f"another model than it was trained on: {'; '.join(differences)} (--allow-other-model)"
    ]


def trained_store(sae_dirs: list[Path]) -> str:
    """The store saved SAEs were trained on, from their `cfg.json`; refused when they were
    trained on different stores (other identities), or when the store is gone."""
    first = sae_dirs[0]
    first_cfg = SAEConfig.read(first / CFG_FILE)
    for other in sae_dirs[1:]:
        cfg = SAEConfig.read(other / CFG_FILE)
        if _store_key(cfg) != _store_key(first_cfg):
            raise SaekitError(
                f"SAEs {first} and {other} were trained on different stores "
                f"({first_cfg.store.get('location')} and {cfg.store.get('location')}); "
                "measure them separately, or give the one store to measure them on with --store"
            )
    location = recorded_store(first)
    if is_local(location) and not local_path(location).exists():
        raise SaekitError(
            f"{first / CFG_FILE} names the store {location}, which does not exist (moved or "
            "deleted); give the store with --store"
        )
    return location


def _store_key(cfg: SAEConfig) -> Any:
    """What tells two training stores apart: their identity (a copy of a store is the same
    store), or their location when no identity was recorded."""
    identity = cfg.store.get("identity")
    return json.dumps(identity, sort_keys=True) if identity else cfg.store.get("location")

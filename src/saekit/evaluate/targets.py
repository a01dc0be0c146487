"""What gets evaluated: saved SAEs, each in the inference modes its variant has.

A *target* is one row of a report: an SAE in one mode. The variant says which modes it has and
computes codes in each (`saekit.train.modes` names them); nothing here knows a variant.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.base.errors import SaekitError
from saekit.base.locations import is_local, local_path
from saekit.cache_format import ActivationStore
from saekit.cache_format.schema import ACTIVATIONS, GRADIENTS, hook_field
from saekit.train import (
    CFG_FILE,
    SAE,
    Code,
    SAEConfig,
    Shape,
    concatenated,
    load_sae,
    modes,
    recorded_store,
    sae_directories,
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
        """The first hook the dictionary reads (its only one for an SAE)."""
        return self.sae.cfg.hook

    @property
    def shape(self) -> Shape:
        return self.sae.shape

    def fields(self, gradients: bool = False) -> tuple[str, ...]:
        """The store fields this target reads: every hook's activations, and the gradients at
        its targets in a mode that uses them or when asked (`gradients`)."""
        gradients = gradients or self.needs_gradients
        gradient_hooks = self.shape.target_hooks if gradients else ()
        return (
            *(hook_field(ACTIVATIONS, hook) for hook in self.shape.hooks),
            *(hook_field(GRADIENTS, hook) for hook in gradient_hooks),
        )

    def inputs(
        self, batch: Mapping[str, Tensor], device: torch.device
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(input x, target y, gradients at the targets when the batch holds them) of a batch
        read with `fields()`, on `device`."""
        shape = self.shape
        x_BD = concatenated(_activations(batch, shape.source_hooks), shape.source_hooks)
        y_BE = concatenated(_activations(batch, shape.target_hooks), shape.target_hooks)
        g_BE = None
        names = {h: hook_field(GRADIENTS, h) for h in shape.target_hooks}
        if all(name in batch for name in names.values()):
            gradients = {h: batch[name] for h, name in names.items()}
            g_BE = concatenated(gradients, shape.target_hooks).to(device)
        return x_BD.to(device), y_BE.to(device), g_BE

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

    def reconstruct(self, x_BD: Tensor, g_BE: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(codes f, reconstruction ŷ of the targets) of raw activations in this target's
        mode (`g_BE`: gradients at the targets, read in modes that use them)."""
        f_BF = self.code(x_BD, g_BE).to_dense()
        return f_BF, self.sae.output(x_BD, f_BF)


def _activations(batch: Mapping[str, Tensor], hooks: tuple[str, ...]) -> dict[str, Tensor]:
    return {hook: batch[hook_field(ACTIVATIONS, hook)] for hook in hooks}


def targets_of(run: str, sae: SAE, diagnostic: bool = False) -> list[Target]:
    """The SAE in each of its variant's modes (`diagnostic`: also those that only explain)."""
    variant_modes = sae.activation.modes(sae.activation.options, diagnostic)
    return [Target(run, sae, mode) for mode in variant_modes]


def inspection_target(run: str, sae: SAE, store: ActivationStore) -> Target:
    """The SAE in the mode it is used in (its variant's first), or in its first mode that needs
    no gradients when the store has none at its targets."""
    targets = targets_of(run, sae)
    if not all(store.has_gradients(hook) for hook in sae.shape.target_hooks):
        targets = [t for t in targets if not t.needs_gradients]
    return targets[0]


def load_targets(
    runs: list[str],
    store: ActivationStore,
    device: torch.device,
    allow_other_model: bool = False,
    warnings: list[str] | None = None,
    storage_options: dict | None = None,
) -> list[Target]:
    """Every SAE each argument names (a run's `RUN/saes/*`, a saved SAE, a published SAE's
    URL), checked against the store (`check_provenance`; the warnings of what
    `allow_other_model` let through are added to `warnings`), in every mode; rows name the
    argument's last part."""
    targets = []
    for run in runs:
        for sae_dir in sae_directories(run, storage_options):
            sae = load_sae(sae_dir, device)
            found = check_provenance(sae, store, sae_dir, allow_other_model)
            if warnings is not None:
                warnings += found
            targets += targets_of(run_name(run), sae)
    return targets


def run_name(run: str) -> str:
    """What a report row calls the run (or SAE) it comes from: the last part of its path or
    URL."""
    return Path(run.rstrip("/")).name


def check_against_store(sae: SAE, store: ActivationStore, where: Path) -> None:
    """Refuse a dictionary that reads or reconstructs a hook the store lacks, or whose width at
    a hook differs from the store's."""
    sources = sae.shape.sources
    for block in (*sources, *sae.shape.targets):
        if block.hook not in store.spec.hooks:
            raise SaekitError(
                f"SAE {where} was trained on hook {block.hook}, which store "
                f"{store.location} lacks (it has {store.hooks})"
            )
        width = store.spec.hooks[block.hook].d
        if block.d != width:
            side = "d_in" if block in sources else "d_out"
            raise SaekitError(
                f"SAE {where} takes {side}={block.d} at {block.hook} but store "
                f"{store.location} has d={width} there"
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
    sae: SAE,
    store: ActivationStore,
    where: Path,
    allow_other_model: bool = False,
    overridable: bool = True,
) -> list[str]:
    """The one check of an SAE meeting a store (eval, inspect, recipes, fine-tunes): the hook
    and width always (`check_against_store`); the model, tokenizer, vocabulary and context size
    the store it was trained on recorded, unless `allow_other_model`, which returns the warning a
    report must then carry. `overridable`: whether the command has --allow-other-model (the
    refusal offers it only then)."""
    check_against_store(sae, store, where)
    trained = sae.cfg.store.get("identity")
    trained = trained if isinstance(trained, dict) else {}
    differences = provenance_differences(trained, store.spec.identity)
    if not differences:
        return []
    if not allow_other_model:
        override = (
            ", or pass --allow-other-model to measure it on this one (the output then says so)"
            if overridable
            else ""
        )
        raise SaekitError(
            f"SAE {where} was trained on activations of another model than store "
            f"{store.location} holds: {'; '.join(differences)}; give the store it was trained "
            f"on with --store{override}"
        )
    return [
        f"SAE {where} is measured on store {store.location}, whose activations come from "
        f"another model than it was trained on: {'; '.join(differences)} (--allow-other-model)"
    ]


def trained_store(sae_dirs: list[Path]) -> str:
    """The store saved SAEs were trained on, from their `cfg.json`; refused when they were
    trained on different stores (other identities), or when the store is gone. SAEs that name
    no store (imported from another library) are measured on the store the others name; when
    none names one, the line asks for --store."""
    named = [sae_dir for sae_dir in sae_dirs if _names_store(sae_dir)]
    if not named:
        return recorded_store(sae_dirs[0])  # refused: it says why and asks for --store
    first = named[0]
    first_cfg = SAEConfig.read(first / CFG_FILE)
    for other in named[1:]:
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


def _names_store(sae_dir: Path) -> bool:
    """Whether a saved SAE records the store it was trained on (imported SAEs do not)."""
    try:
        recorded_store(sae_dir)
    except SaekitError:
        return False
    return True


def _store_key(cfg: SAEConfig) -> Any:
    """What tells two training stores apart: their identity (a copy of a store is the same
    store), or their location when no identity was recorded."""
    identity = cfg.store.get("identity")
    return json.dumps(identity, sort_keys=True) if identity else cfg.store.get("location")

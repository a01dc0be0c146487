"""What gets evaluated: saved SAEs, each in the inference modes its variant has.

A *target* is one row of a report: an SAE in one mode. The variant says which modes it has and
computes codes in each (`saekit.train.modes` names them); nothing here knows a variant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from saekit.base.errors import SaekitError
from saekit.cache_format import ActivationStore
from saekit.cache_format.schema import ACTIVATIONS, GRADIENTS, hook_field
from saekit.train import SAE, Code, Shape, concatenated, load_sae, modes, saved_saes

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


def load_targets(runs: list[str], store: ActivationStore, device: torch.device) -> list[Target]:
    """Every SAE under `RUN/saes/`, checked against the store, in every mode."""
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
            check_against_store(sae, store, sae_dir)
            targets += targets_of(Path(run).name, sae)
    return targets


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

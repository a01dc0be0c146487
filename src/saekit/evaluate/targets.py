"""What gets evaluated: every saved SAE of every run, in each of its inference modes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from saekit.cache_format import ActivationStore
from saekit.errors import SaekitError

if TYPE_CHECKING:
    from saekit.train.sparse import Code

DEFAULT_BATCH_ROWS = 4096


@dataclass
class Target:
    """One row of a report: an SAE in one mode.

    Modes: `inference` (one token at a time), `threshold` and `batch` for batch-dependent variants
    (learnt thresholds, or the training-time selection over a batch), `grad` and `plain` for
    g-SAE (selection with the clean-model gradient, or with β = 0).
    """

    run: str
    sae: torch.nn.Module  # saekit.train.SAE with its `cfg`
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
        return self.name if self.mode == "inference" else f"{self.name} [{self.mode}]"

    @property
    def needs_gradients(self) -> bool:
        return self.mode == "grad"

    @property
    def batch_dependent(self) -> bool:
        return self.mode == "batch"

    def code(self, x_BD: Tensor, g_BD: Tensor | None = None) -> Code:
        """Codes of raw activations in this target's mode, sparse where the variant makes them
        sparse (`g_BD` is used in grad mode only)."""
        activation = self.sae.activation
        if self.mode == "batch":
            return activation.encode_batch(self.sae, x_BD, None)
        return activation.encode(self.sae, x_BD, g_BD if self.mode == "grad" else None)

    @property
    def batch_rows(self) -> int:
        """Rows per selection: the training batch size in batch mode (else any batching gives
        the same codes; 4096 then)."""
        if self.batch_dependent:
            return int(self.sae.cfg.training.get("batch_size", DEFAULT_BATCH_ROWS))
        return DEFAULT_BATCH_ROWS

    def reconstruct(self, x_BD: Tensor, g_BD: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(codes f, reconstruction x̂) of raw activations in this target's mode."""
        f_BF = self.code(x_BD, g_BD).to_dense()
        return f_BF, self.sae.decode(f_BF)


def modes_of(sae: torch.nn.Module) -> list[str]:
    """The inference modes a saved SAE is evaluated in (see `Target`)."""
    from saekit.train.variants.base import BatchSelection

    if sae.activation.needs_gradients:
        return ["grad", "plain"]
    if isinstance(sae.activation, BatchSelection):
        return ["threshold", "batch"]
    return ["inference"]


def load_targets(runs: list[str], store: ActivationStore, device: torch.device) -> list[Target]:
    """Every SAE under `RUN/saes/`, checked against the store, in every mode."""
    from saekit.train import load_sae

    targets = []
    for run in runs:
        directory = Path(run)
        sae_dirs = sorted(p for p in (directory / "saes").glob("*") if (p / "cfg.json").is_file())
        if not sae_dirs:
            raise SaekitError(
                f"{run} holds no trained SAEs (no saes/<name>/cfg.json); give a "
                "directory written by sae train"
            )
        for sae_dir in sae_dirs:
            sae = load_sae(sae_dir, device)
            check_against_store(sae, store, sae_dir)
            targets += [Target(directory.name, sae, mode) for mode in modes_of(sae)]
    return targets


def check_against_store(sae: torch.nn.Module, store: ActivationStore, where: Path) -> None:
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

"""What is inspected: saved SAEs (given as runs or as SAE directories), in one mode each, and
which of their latents."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from saekit.cache_format import ActivationStore
from saekit.errors import SaekitError
from saekit.evaluate.targets import Target, check_against_store, modes_of
from saekit.train.export import CFG_FILE
from saekit.train.sparse import DenseCode

from .accumulators import Firings


@dataclass
class Subject:
    """One SAE in the mode it is inspected in, and the latents inspected (in increasing order).

    The mode is the SAE's first evaluation mode: `threshold` for batch-dependent variants (one
    token at a time), `grad` for g-SAE (its training selection, with the store's gradients; `plain`
    when the store has none), `inference` otherwise.
    """

    target: Target
    latents_S: Tensor  # int64 latent indices
    directory: Path

    @property
    def sae(self) -> torch.nn.Module:
        return self.target.sae

    @property
    def n_slots(self) -> int:
        return len(self.latents_S)

    def slot_of_latent(self, device: torch.device) -> Tensor:
        """[F] int64: the slot of every latent, −1 for latents not inspected."""
        slots_F = torch.full((self.sae.d_sae,), -1, dtype=torch.int64, device=device)
        slots_F[self.latents_S.to(device)] = torch.arange(self.n_slots, device=device)
        return slots_F

    def firings(self, x_BD: Tensor, g_BD: Tensor | None, row_B: Tensor, slots_F: Tensor) -> Firings:
        """The positive codes of the inspected latents on these rows."""
        code = self.target.code(x_BD, g_BD)
        if isinstance(code, DenseCode):
            index_N, latent_N = code.f_BF.nonzero(as_tuple=True)
            value_N = code.f_BF[index_N, latent_N]
        else:
            index_N, latent_N, value_N = code.pattern.row_N, code.pattern.latent_N, code.values_N
        slot_N = slots_F[latent_N]
        keep = (value_N > 0) & (slot_N >= 0)
        index_N = index_N[keep]
        return Firings(row_B[index_N], index_N, slot_N[keep], latent_N[keep], value_N[keep].float())


def run_of(directory: Path) -> Path | None:
    """The run a saved SAE's directory belongs to (RUN for RUN/saes/NAME), or None."""
    return directory.parent.parent if directory.parent.name == "saes" else None


def sae_directories(path: str) -> list[Path]:
    """The SAE directories a command-line argument names: a run (all of RUN/saes/*) or one SAE."""
    directory = Path(path)
    if (directory / CFG_FILE).is_file():
        return [directory]
    saes = sorted(p for p in (directory / "saes").glob("*") if (p / CFG_FILE).is_file())
    if not saes:
        raise SaekitError(
            f"{path} is neither a run nor a saved SAE; give a directory written by sae train "
            "(RUN or RUN/saes/NAME)"
        )
    return saes


def parse_latents(text: str) -> int | list[int] | None:
    """`all` → None, `N` → N (the first N latents), `i,j,k` → that list."""
    text = text.strip()
    if text == "all":
        return None
    try:
        if "," not in text:
            count = int(text)
            if count <= 0:
                raise ValueError
            return count
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SaekitError(
            f"--latents {text!r} is not 'all', a positive count N or a list i,j,k of latents"
        ) from None


def choose_latents(spec: int | list[int] | None, d_sae: int, where: Path) -> Tensor:
    """The latent indices of `parse_latents`' answer for an SAE with `d_sae` latents."""
    if spec is None:
        return torch.arange(d_sae)
    if isinstance(spec, int):
        return torch.arange(min(spec, d_sae))
    outside = [i for i in spec if not 0 <= i < d_sae]
    if outside:
        raise SaekitError(
            f"--latents {outside[0]} is out of range: SAE {where} has {d_sae} latents "
            f"(0 to {d_sae - 1})"
        )
    return torch.tensor(sorted(set(spec)), dtype=torch.int64)


def load_subjects(
    paths: list[str], store: ActivationStore, latents: str, device: torch.device
) -> list[Subject]:
    """Every SAE named by `paths`, checked against the store, in its inspection mode."""
    from saekit.train import load_sae

    spec = parse_latents(latents)
    subjects = []
    for path in paths:
        for directory in sae_directories(path):
            sae = load_sae(directory, device)
            check_against_store(sae, store, directory)
            mode = modes_of(sae)[0]
            if mode == "grad" and not store.has_gradients(sae.cfg.hook):
                mode = "plain"
            chosen = choose_latents(spec, sae.d_sae, directory)
            run = run_of(directory)
            target = Target(run.name if run else "", sae, mode)
            subjects.append(Subject(target, chosen, directory))
    return subjects

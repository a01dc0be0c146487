"""What is inspected: saved SAEs (given as runs or as SAE directories), in one mode each, and
which of their latents."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from saekit.base.errors import SaekitError
from saekit.cache_format import ActivationStore
from saekit.evaluate import Target, check_provenance, inspection_target
from saekit.train import SAE, DenseCode, load_sae, run_of, sae_directories

from .accumulators import Firings


@dataclass
class Subject:
    """One SAE in the mode it is inspected in, and the latents inspected (in increasing order).

    The mode is the one the SAE is used in (`evaluate.inspection_target`): its variant's first,
    or its first that needs no gradients when the store has none.
    """

    target: Target
    latents_S: Tensor  # int64 latent indices
    directory: Path

    @property
    def sae(self) -> SAE:
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
        chosen = [int(part) for part in text.split(",") if part.strip()]
        if not chosen:
            raise ValueError
        return chosen
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
    paths: list[str],
    store: ActivationStore,
    latents: str,
    device: torch.device,
    allow_other_model: bool = False,
    warnings: list[str] | None = None,
    storage_options: dict | None = None,
) -> list[Subject]:
    """Every SAE named by `paths` (runs, saved SAEs, published SAEs' URLs), checked against the
    store (`check_provenance`; the warnings of what `allow_other_model` let through are added to
    `warnings`), in its inspection mode."""
    spec = parse_latents(latents)
    subjects = []
    for path in paths:
        for directory in sae_directories(path, storage_options):
            sae = load_sae(directory, device)
            found = check_provenance(sae, store, directory, allow_other_model)
            if warnings is not None:
                warnings += found
            chosen = choose_latents(spec, sae.d_sae, directory)
            run = run_of(directory)
            target = inspection_target(run.name if run else "", sae, store)
            subjects.append(Subject(target, chosen, directory))
    return subjects

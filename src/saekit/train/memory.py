"""How much memory SAEs need to train, checked before anything is allocated."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from saekit.base.devices import device_memory
from saekit.base.errors import SaekitError
from saekit.base.units import human_bytes
from saekit.train.shape import Shape
from saekit.train.spec import ResolvedSpec

FLOAT_BYTES = 4
# float32 copies of the parameters held while training: weights, gradients, Adam's two moments
PARAMETER_COPIES = 4
# dense [batch, latents] float32 tensors a step may hold at once (pre-activations, codes, grads)
BATCH_BY_LATENTS_COPIES = 3


def training_bytes(d_in: int, d_out: int, latents: int, batch_size: int) -> int:
    """About how many bytes one dictionary needs to train (its parameters, their gradients and
    Adam moments, and the dense batch-by-latents tensors of a step)."""
    parameters = latents * (d_in + d_out) + latents + d_in + d_out
    per_step = BATCH_BY_LATENTS_COPIES * batch_size * latents
    return FLOAT_BYTES * (PARAMETER_COPIES * parameters + per_step)


def check_memory(
    specs: list[ResolvedSpec],
    shapes: Mapping[str, Shape],
    batch_size: int,
    device: torch.device,
) -> None:
    """Refuse dictionaries that cannot fit on `device` together, saying how much they need (a
    cross-layer transcoder's decoder counted whole, as if every group wrote every layer)."""
    need = {}
    for spec in specs:
        shape = shapes[spec.name]
        latents = spec.latents * len(shape.layers or (None,))
        need[spec.name] = training_bytes(shape.d_in, shape.d_out, latents, batch_size)
    total, have = sum(need.values()), device_memory(device)
    if total > have:
        largest = max(need, key=need.__getitem__)
        raise SaekitError(
            f"the SAEs would need about {human_bytes(total)} of memory to train "
            f"({largest}: {human_bytes(need[largest])}), more than the {human_bytes(have)} of "
            f"{device}; lower latents or --batch-size"
        )

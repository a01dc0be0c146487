"""A dictionary read from another library's folder, mapped onto a saekit variant and shape.

Each importer (one module per library) reads a folder in its library's format and describes
it as a `Foreign`: the saekit variant that computes the same codes, the variant's keys, the
hooks it reads and predicts, and the saekit state dict (`W_enc [F, D]`, `b_enc [F]`,
`W_dec [E, F]`, `b_dec [E]`, a transcoder's `b_in [D]` and `W_skip [E, D]`, the variant's own
state under `activation.`) with every difference of convention already folded in.
`build` turns it into a saekit dictionary with its `SAEConfig`, so evaluation, inspection and
the recipes need no special case.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from saekit.base.errors import SaekitError
from saekit.train.sae import Dictionary
from saekit.train.sae_config import SAEConfig
from saekit.train.shape import Block, Shape
from saekit.train.spec import make_spec


@dataclass(frozen=True)
class Foreign:
    """What an importer read: the library's description and saekit's equivalent."""

    library: str  # "sae_lens", "sparsify", "dictionary_learning"
    version: str | None  # the library version the folder records, if any
    architecture: str  # the library's name for the dictionary's class
    source: Path
    config: dict[str, Any]  # the library's configuration, as read
    variant: str  # the saekit variant computing the same codes
    options: dict[str, Any]  # the variant's keys beyond latents and the shape (k, groups, ...)
    hook: str  # the store hook it reads
    target: str | None  # the store hook it predicts (a transcoder), None: it reconstructs `hook`
    skip: bool  # a linear skip path from the input to the target
    tensors: dict[str, Tensor]  # saekit's state dict, float32
    library_hooks: dict[str, str | None]  # the hooks as the library names them

    @property
    def d_sae(self) -> int:
        return int(self.tensors["W_enc"].shape[0])

    def shape(self) -> Shape:
        d_in, d_out = self.tensors["W_enc"].shape[1], self.tensors["W_dec"].shape[0]
        source = Block(self.hook, int(d_in))
        if self.target is None:
            return Shape((source,), (source,), self.skip)
        return Shape((source,), (Block(self.target, int(d_out)),), self.skip)

    def default_name(self) -> str:
        return f"{self.library}-{self.architecture}-{self.d_sae}"


def build(foreign: Foreign, name: str | None = None) -> tuple[Dictionary, SAEConfig]:
    """The saekit dictionary (eval mode, on the CPU) and its config."""
    shape = foreign.shape()
    name = name or foreign.default_name()
    keys: dict[str, Any] = {**foreign.options, "latents": foreign.d_sae, "name": name}
    if foreign.target is not None:
        keys.update(hooks=foreign.hook, target=foreign.target, skip=foreign.skip)
    elif foreign.skip:
        keys.update(hooks=foreign.hook, target=foreign.hook, skip=True)
    where = f"{foreign.source} ({foreign.library} {foreign.architecture})"
    spec = make_spec(foreign.variant, keys, where).resolve(shape.d_in)
    sae = spec.build(shape)
    expected = {key: tuple(t.shape) for key, t in sae.state_dict().items()}
    found = {key: tuple(t.shape) for key, t in foreign.tensors.items()}
    assert expected == found, f"importer state {found} does not fit {foreign.variant}: {expected}"
    sae.load_state_dict(foreign.tensors)
    single = shape.sources == shape.targets and not shape.skip
    cfg = SAEConfig(
        name=spec.name,
        variant=spec.variant,
        hook=foreign.hook,
        d_in=shape.d_in,
        d_sae=foreign.d_sae,
        k=getattr(spec.options, "k", None),
        options=spec.options_dict(),
        calibration={},
        input_scale=1.0,
        store={},
        training={},
        shape=None if single else shape.to_json(),
        input_scales=None if single else dict.fromkeys(shape.hooks, 1.0),
        imported_from={
            "library": foreign.library,
            "version": foreign.version,
            "architecture": foreign.architecture,
            "source": str(foreign.source.resolve()),
            "hooks": foreign.library_hooks,
            "config": foreign.config,
        },
    )
    sae.cfg = cfg
    return sae.eval(), cfg


# -- the variants' own state -----------------------------------------------------------------------


def jumprelu_state(threshold_F: Tensor) -> dict[str, Tensor]:
    """saekit's JumpReLU keeps log θ; `relu(h)·1[h > θ]` with θ ≤ 0 is `relu(h)`, which is
    `h·1[h > 0]`: θ = 0, log θ = −inf, exactly."""
    return {"activation.log_threshold": threshold_F.clamp_min(0).log()}


def gated_state(r_mag_F: Tensor, b_mag_F: Tensor) -> dict[str, Tensor]:
    return {"activation.r_mag": r_mag_F, "activation.b_mag": b_mag_F}


def batch_threshold_state(threshold: float) -> dict[str, Tensor]:
    """A BatchTopK's global inference threshold θ as saekit's moving average holds it: one
    observation of θ (so it is used as it is)."""
    if not math.isfinite(threshold):
        raise SaekitError(f"the threshold {threshold} is not a finite number")
    return {
        "activation.threshold.moment": torch.tensor(float(threshold)),
        "activation.threshold.observations": torch.tensor(1),
    }


def fold_input_bias(W_enc_FD: Tensor, b_enc_F: Tensor, b_D: Tensor) -> Tensor:
    """The encoder bias that makes `W_enc (x − b) + b_enc'` equal `W_enc x + b_enc`."""
    return b_enc_F + W_enc_FD @ b_D


def float32(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every tensor as contiguous float32 (an exact widening of float16 and bfloat16)."""
    return {
        key: t.to(torch.float32).contiguous() if t.is_floating_point() else t.contiguous()
        for key, t in tensors.items()
    }


# -- reading a library's files, every failure one line ---------------------------------------------


def read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from `path`, or one line saying why `path` is not `what`."""
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise SaekitError(f"{path} cannot be read as {what} ({error})") from None
    if not isinstance(value, dict):
        raise SaekitError(f"{path} is not {what}: it holds no JSON object")
    return value


def read_safetensors(path: Path, what: str) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except Exception as error:  # safetensors raises its own error types for broken files
        raise SaekitError(f"{path} cannot be read as {what} ({error})") from None


def check_tensors(
    path: Path, tensors: dict[str, Tensor], expected: dict[str, tuple[int, ...]], what: str
) -> None:
    """Refuse tensors whose names or shapes are not those `what` has."""
    for key in sorted(set(expected) | set(tensors)):
        found = tuple(tensors[key].shape) if key in tensors else None
        if found != expected.get(key):
            wanted = "none" if key not in expected else list(expected[key])
            got = "none" if found is None else list(found)
            raise SaekitError(
                f"{path} holds {key} of shape {got} where {what} has {wanted}; it is not a "
                f"complete {what}"
            )

"""`SAEConfig`: what a saved SAE is (its `cfg.json`), shared by the SAE core and the export."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saekit import __version__
from saekit.base.errors import SaekitError
from saekit.train.shape import Shape

SAE_FORMAT = "saekit.sae"
SAE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SAEConfig:
    """What a saved SAE is: everything needed to rebuild it and to know what it was trained on."""

    name: str
    variant: str
    hook: str
    d_in: int
    d_sae: int
    k: int | None  # active latents per token (TopK family; mean for BatchTopK / FC), else None
    options: dict[str, Any]  # every option, resolved (see docs/variants.md)
    calibration: dict[str, float]  # values set from data before training (g-SAE: beta)
    input_scale: float  # c of training (E‖c·x‖ = √d) at `hook`, already folded into the weights
    store: dict[str, Any]  # location, identity and rows of the store it was trained on
    training: dict[str, Any]  # tokens, steps, batch size, seed, epochs
    # where it reads and what it reconstructs (`Shape.to_json`); None: an SAE on `hook`
    shape: dict[str, Any] | None = None
    # every hook's scale of training, already folded in; None: `input_scale` at `hook`
    input_scales: dict[str, float] | None = None
    # for a dictionary imported from another library (`sae import`): the library, its version,
    # its name for the architecture, the source folder, its hook names and its configuration
    imported_from: dict[str, Any] | None = None
    # how a KL fine-tune made it from another SAE of its run (`sae finetune`: the SAE it
    # started from, tokens, loss, learning rate, data, model); None for an SAE of `sae train`
    finetune: dict[str, Any] | None = None
    saekit_version: str = __version__
    format: str = SAE_FORMAT
    format_version: int = SAE_FORMAT_VERSION

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SAEConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})

    @classmethod
    def read(cls, path: Path) -> SAEConfig:
        """The config in a `cfg.json`, checked field by field; one `SaekitError` otherwise."""
        try:
            values = json.loads(path.read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            raise SaekitError(f"{path.parent} holds no saved SAE (no {path.name})") from None
        except (OSError, ValueError) as error:
            raise SaekitError(f"{path} cannot be read as JSON ({error}); {DAMAGED}") from None
        if not isinstance(values, dict) or values.get("format") != SAE_FORMAT:
            raise SaekitError(f"{path} does not describe a saekit SAE")
        version = values.get("format_version", SAE_FORMAT_VERSION)
        if not _is_count(version):
            raise SaekitError(
                f"{path}: format_version must be a positive integer, not {version!r}; {DAMAGED}"
            )
        if version > SAE_FORMAT_VERSION:
            raise SaekitError(
                f"{path} uses saved-SAE format version {version}, newer than the "
                f"{SAE_FORMAT_VERSION} this saekit reads; upgrade saekit"
            )
        for name, expected, ok in _FIELD_CHECKS:
            if not ok(values.get(name)):
                raise SaekitError(
                    f"{path}: {name} must be {expected}, not {values.get(name)!r}; {DAMAGED}"
                )
        cfg = cls.from_dict(values)
        if cfg.shape is not None:
            try:
                shape = Shape.from_json(cfg.shape)
            except (KeyError, TypeError, ValueError):
                raise SaekitError(f"{path}: shape is not a valid shape; {DAMAGED}") from None
            missing = [
                hook for hook in shape.hooks if hook not in (cfg.input_scales or {cfg.hook: 1})
            ]
            if shape.d_in != cfg.d_in or missing:
                raise SaekitError(
                    f"{path}: shape disagrees with d_in={cfg.d_in} or input_scales; {DAMAGED}"
                )
        return cfg

    def dictionary_shape(self) -> Shape:
        """Where the dictionary reads and what it reconstructs."""
        return (
            Shape.single(self.hook, self.d_in)
            if self.shape is None
            else Shape.from_json(self.shape)
        )

    def scale_of(self, hook: str) -> float:
        """The scale `hook`'s activations were trained at."""
        return self.input_scale if self.input_scales is None else float(self.input_scales[hook])

    @property
    def finetuned(self) -> bool:
        """Whether `sae finetune` made this SAE (from another SAE of its run)."""
        return self.finetune is not None

    @property
    def sources(self) -> tuple[str, ...]:
        return self.dictionary_shape().source_hooks

    @property
    def targets(self) -> tuple[str, ...]:
        return self.dictionary_shape().target_hooks


DAMAGED = "the saved SAE is damaged, export it again (sae train --resume on its run)"


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _is_scale(value: Any) -> bool:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and value > 0


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


_FIELD_CHECKS = (
    ("name", "a non-empty string", _is_text),
    ("variant", "a non-empty string", _is_text),
    ("hook", "a non-empty string", _is_text),
    ("d_in", "a positive integer", _is_count),
    ("d_sae", "a positive integer", _is_count),
    ("k", "a positive integer or null", lambda value: value is None or _is_count(value)),
    ("options", "an object", _is_object),
    ("calibration", "an object", _is_object),
    ("store", "an object", _is_object),
    ("training", "an object", _is_object),
    ("input_scale", "a positive number", _is_scale),
    ("shape", "an object or null", lambda value: value is None or _is_object(value)),
    ("imported_from", "an object or null", lambda value: value is None or _is_object(value)),
    (
        "input_scales",
        "an object of positive numbers or null",
        lambda value: value is None or (_is_object(value) and all(map(_is_scale, value.values()))),
    ),
    ("finetune", "an object or null", lambda value: value is None or _is_object(value)),
)

"""SAE specs: `variant:key=value,...` strings (`--sae`) and `[[sae]]` tables (`--config`).

A spec names a variant and sets some of its options; `resolve` fills in the defaults that depend
on the store (latents = 16·d, the learning-rate rule) and derives the SAE's name. Mistakes raise
`SaekitError` with one line that names the spec, the problem and the closest valid names.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from saekit.base.errors import SaekitError
from saekit.train.sae import SAE
from saekit.train.variants import VARIANTS, SAEOptions, all_names, canonical_name

TRUE_WORDS = ("true", "yes", "1", "on")
FALSE_WORDS = ("false", "no", "0", "off")


@dataclass(frozen=True)
class SAESpec:
    """A variant and the options given for it (`given`: the keys set explicitly)."""

    variant: str
    options: SAEOptions
    given: tuple[str, ...]
    source: str  # how the user wrote it, for error messages

    def resolve(self, d_in: int, default_lr: float | None = None) -> ResolvedSpec:
        """Fill in the defaults for inputs of width `d_in`; refuse k > latents."""
        options = self.options.resolve(d_in, default_lr)
        k = getattr(options, "k", None)
        if k is not None and k > options.latents:
            raise SaekitError(
                f"{self.source}: k={k} is more than latents={options.latents}; lower k or "
                "raise latents"
            )
        name = options.name or derive_name(self.variant, options, self.given)
        return ResolvedSpec(name, self.variant, options)


@dataclass(frozen=True)
class ResolvedSpec:
    """Everything needed to build one SAE."""

    name: str
    variant: str
    options: SAEOptions

    @property
    def latents(self) -> int:
        assert self.options.latents is not None, "resolved options set latents"
        return self.options.latents

    @property
    def lr(self) -> float:
        assert self.options.lr is not None, "resolved options set lr"
        return self.options.lr

    @property
    def needs_gradients(self) -> bool:
        return VARIANTS[self.variant].needs_gradients

    def build(self, d_in: int) -> SAE:
        """A new SAE of this spec (weights not initialised)."""
        activation = VARIANTS[self.variant](self.options, d_in, self.latents)
        return SAE(d_in, self.latents, activation)

    def options_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options)


def parse_spec(text: str) -> SAESpec:
    """Parse `variant[:key=value,...]`, e.g. `topk:k=32,latents=4096`."""
    source = f"--sae '{text}'"
    variant, _, rest = text.strip().partition(":")
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SaekitError(f"{source}: '{item}' is not key=value; write e.g. topk:k=32")
        if key.strip() in values:
            raise SaekitError(f"{source}: key '{key.strip()}' is given twice; give it once")
        values[key.strip()] = value.strip()
    return make_spec(variant.strip(), values, source)


def spec_from_table(table: dict[str, Any], source: str) -> SAESpec:
    """A spec from a TOML table: `variant = "topk"` plus option keys."""
    if "variant" not in table:
        raise SaekitError(f"{source} has no 'variant' key; add e.g. variant = \"topk\"")
    values = {key: value for key, value in table.items() if key != "variant"}
    return make_spec(str(table["variant"]), values, source)


def make_spec(variant: str, values: dict[str, Any], source: str) -> SAESpec:
    """Check the variant and keys, convert the values, validate the options."""
    canonical = canonical_name(variant)
    if canonical is None:
        raise SaekitError(
            f"{source}: unknown SAE variant '{variant}'"
            + suggest(variant, all_names())
            + f" (variants: {', '.join(sorted(all_names()))})"
        )
    options_type = VARIANTS[canonical].options_type
    hints = typing.get_type_hints(options_type)
    keys = [f.name for f in dataclasses.fields(options_type)]
    converted = {}
    for key, value in values.items():
        if key not in keys:
            raise SaekitError(
                f"{source}: unknown key '{key}' for {canonical}"
                + suggest(key, keys)
                + f" (keys: {', '.join(keys)})"
            )
        try:
            converted[key] = convert(value, hints[key])
        except ValueError as error:
            raise SaekitError(f"{source}: {key}: {error}") from None
    try:
        options = options_type(**converted)
    except ValueError as error:
        raise SaekitError(f"{source}: {error}") from None
    return SAESpec(canonical, options, tuple(converted), source)


def suggest(word: str, choices: list[str]) -> str:
    """'; did you mean X?' for the closest choices, or ''."""
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def convert(value: Any, annotation: Any) -> Any:
    """`value` (a string from the command line, or a TOML value) as the annotated type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        (annotation,) = inner  # options are `T` or `T | None`
        origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = list(typing.get_args(annotation))
        if value not in choices:
            raise ValueError(
                f"'{value}' is not one of {', '.join(choices)}" + suggest(str(value), choices)
            )
        return value
    if annotation is bool:
        return _to_bool(value)
    if annotation is int:
        return _to_int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"expected a number, got '{value}'") from None
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {value!r}")
        return number
    return str(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    raise ValueError(f"expected true or false, got {value!r}")


def _to_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)  # also accepts 1_000_000
        except ValueError:
            number = _float_or_none(value)  # 1e6
            if number is not None and number.is_integer():
                return int(number)
    raise ValueError(f"expected an integer, got {value!r}")


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def derive_name(variant: str, options: SAEOptions, given: tuple[str, ...]) -> str:
    """`variant-<headline keys>-<latents>[-<other keys set to non-defaults>]`,
    e.g. `topk-k32-4096`, `gsae-k32-beta_eff1-16384-no_selection_only`."""
    defaults = type(options)()
    parts = [variant]
    for key in options.HEADLINE:
        if getattr(options, key) is not None:
            parts.append(_name_part(key, getattr(options, key)))
    parts.append(str(options.latents))
    for key in given:
        value = getattr(options, key)
        if key not in (*options.HEADLINE, "latents", "name") and value != getattr(defaults, key):
            parts.append(_name_part(key, value))
    return "-".join(parts)


def _name_part(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return key if value else f"no_{key}"
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{key}{'_' if key[-1].isdigit() else ''}{text}"

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
from saekit.train.clt import CrossLayerTranscoder
from saekit.train.sae import SAE, Dictionary
from saekit.train.shape import Block, Shape, compact_hooks, layer_range, parse_layers, split_hooks
from saekit.train.variants import VARIANTS, SAEOptions, all_names, canonical_name
from saekit.train.variants.options import SHAPE_KEYS, ShapeOptions

# Variant names that name a shape: `crosscoder:k=32,hooks=a+b+c` is `topk:k=32,hooks=a+b+c`
# (another activation with `activation=relu` and the like); each needs its key.
SHAPE_ALIASES = {"crosscoder": "hooks", "clt": "layers"}

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
        """Fill in the defaults for inputs of width `d_in` (the first hook it reads); refuse
        k > latents (for a cross-layer transcoder both count per layer)."""
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
        """Whether training reads the gradients at the targets: a variant that selects with
        them (g-SAE), or the loss-aware term."""
        return VARIANTS[self.variant].needs_gradients or self.options.loss_aware > 0

    @property
    def cross_layer(self) -> bool:
        return self.options.layers is not None

    def source_hooks(self, default_hook: str | None) -> tuple[str, ...]:
        """The hooks the dictionary reads (`default_hook` unless the spec names them)."""
        return source_hooks(self.options, default_hook, self.name)

    def target_hooks(self, default_hook: str | None) -> tuple[str, ...]:
        """The hooks the dictionary reconstructs."""
        return target_hooks(self.options, default_hook, self.name)

    def shape(self, widths: dict[str, int], default_hook: str | None) -> Shape:
        """The dictionary's shape on a store whose hooks have `widths`; one line for a hook
        the store lacks or a cross-layer transcoder whose layers differ in width."""
        sources = self.source_hooks(default_hook)
        targets = self.target_hooks(default_hook)
        for hook in (*sources, *targets):
            if hook not in widths:
                raise SaekitError(
                    f"SAE {self.name} needs hook {hook}, which the store lacks (it has "
                    f"{', '.join(widths)}); harvest it or change the spec"
                )
        if len(set(sources)) != len(sources) or len(set(targets)) != len(targets):
            raise SaekitError(f"SAE {self.name} names a hook twice")
        shape = Shape(
            tuple(Block(h, widths[h]) for h in sources),
            tuple(Block(h, widths[h]) for h in targets),
            self.options.skip,
            parse_layers(self.options.layers) if self.cross_layer else None,
        )
        if shape.cross_layer and len({b.d for b in (*shape.sources, *shape.targets)}) > 1:
            raise SaekitError(
                f"SAE {self.name}: a cross-layer transcoder needs one width at every layer it "
                "reads and writes"
            )
        return shape

    def build(self, shape: Shape | int) -> Dictionary:
        """A new dictionary of this spec (weights not initialised); an int is the width of a
        single hook (an SAE)."""
        shape = shape if isinstance(shape, Shape) else Shape.single("", shape)
        latents = self.latents * len(shape.layers) if shape.cross_layer else self.latents
        activation = VARIANTS[self.variant](self.options, shape.d_in, latents)
        if shape.cross_layer:
            return CrossLayerTranscoder(shape, latents, activation)
        return SAE(shape, latents, activation)

    def options_dict(self) -> dict[str, Any]:
        """Every option, the shape keys only where set (an SAE on the run's hook records no
        shape, as before shapes existed)."""
        defaults = ShapeOptions()
        return {
            key: value
            for key, value in dataclasses.asdict(self.options).items()
            if key not in SHAPE_KEYS or value != getattr(defaults, key)
        }


def source_hooks(options: SAEOptions, default_hook: str | None, what: str) -> tuple[str, ...]:
    """The hooks a dictionary of these options reads (`default_hook` unless they name them)."""
    if options.layers is not None:
        return tuple(f"blocks.{layer}.{options.reads}" for layer in parse_layers(options.layers))
    if options.hooks is not None:
        return split_hooks(options.hooks)
    if default_hook is None:
        raise SaekitError(f"{what} names no hook and the run has none; give --hook or hooks=...")
    return (default_hook,)


def target_hooks(options: SAEOptions, default_hook: str | None, what: str) -> tuple[str, ...]:
    """The hooks a dictionary of these options reconstructs."""
    if options.layers is not None:
        return tuple(f"blocks.{layer}.{options.writes}" for layer in parse_layers(options.layers))
    if options.target is not None:
        return split_hooks(options.target)
    return source_hooks(options, default_hook, what)


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
    if variant in SHAPE_ALIASES:
        needed = SHAPE_ALIASES[variant]
        if needed not in values:
            raise SaekitError(
                f"{source}: a {variant} needs {needed}=..., e.g. {_EXAMPLES[variant]}"
            )
        values = dict(values)
        variant = str(values.pop("activation", "topk"))
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


_EXAMPLES = {
    "crosscoder": "crosscoder:k=32,hooks=blocks.0.hook_resid_post+blocks.1.hook_resid_post",
    "clt": "clt:k=16,latents=512,layers=0-3",
}


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
    """`variant-<headline keys>-<latents>[-<shape>][-<other keys set to non-defaults>]`,
    e.g. `topk-k32-4096`, `gsae-k32-beta_eff1-16384-no_selection_only`,
    `topk-k16-1024-blocks.1.mlp.hook_in-to-blocks.1.hook_mlp_out-skip`, `topk-k16-512-clt0-3`."""
    defaults = type(options)()
    parts = [variant]
    for key in options.HEADLINE:
        if getattr(options, key) is not None:
            parts.append(_name_part(key, getattr(options, key)))
    parts.append(str(options.latents))
    parts += _shape_parts(options)
    for key in given:
        value = getattr(options, key)
        skipped = (*options.HEADLINE, *SHAPE_KEYS, "latents", "name")
        if key not in skipped and value != getattr(defaults, key):
            parts.append(_name_part(key, value))
    return "-".join(parts)


def _shape_parts(options: SAEOptions) -> list[str]:
    """The shape in a derived name: the hooks read, `to-` the hooks predicted, `skip`; a CLT as
    `clt<layers>` (and what it reads and writes when not the defaults)."""
    defaults = ShapeOptions()
    if options.layers is not None:
        parts = [f"clt{layer_range(parse_layers(options.layers))}"]
        for key in ("reads", "writes"):
            if getattr(options, key) != getattr(defaults, key):
                parts.append(f"{key}_{getattr(options, key)}")
        return parts
    parts = [] if options.hooks is None else [compact_hooks(split_hooks(options.hooks))]
    if options.target is not None:
        parts.append(f"to-{compact_hooks(split_hooks(options.target))}")
    return parts + (["skip"] if options.skip else [])


def _name_part(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return key if value else f"no_{key}"
    text = f"{value:g}" if isinstance(value, float) else str(value).replace("+", "_")
    return f"{key}{'_' if key[-1].isdigit() else ''}{text}"

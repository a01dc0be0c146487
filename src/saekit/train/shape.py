"""Where a dictionary reads and what it reconstructs: its *shape*.

Every dictionary reads the activations of one or more *source* hooks of the same token
(concatenated, in order) and reconstructs one or more *target* hooks of that token:

- an SAE reads and reconstructs one hook;
- a transcoder reads one hook (an MLP's input) and predicts another (its output), and a skip
  transcoder adds a linear skip path from the source to the target;
- a crosscoder reads and reconstructs several hooks with one set of latents;
- a cross-layer transcoder (CLT) has one group of latents per layer: layer l's latents read its
  source (the stream before the MLP) and write to the targets (MLP outputs) of every layer ≥ l.

The activation strategy (TopK, ReLU, JumpReLU, ...) is independent of the shape: any variant
trains any shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class Block:
    """One hook of a shape and its width."""

    hook: str
    d: int


@dataclass(frozen=True)
class Shape:
    """Sources and targets (in order; each a block of the concatenated input or output), a
    linear skip path, and for a cross-layer transcoder the layers its latent groups belong to
    (group i reads source i and writes targets i, i + 1, ...)."""

    sources: tuple[Block, ...]
    targets: tuple[Block, ...]
    skip: bool = False
    layers: tuple[int, ...] | None = None

    @classmethod
    def single(cls, hook: str, d: int) -> Shape:
        """The shape of an SAE on one hook."""
        return cls((Block(hook, d),), (Block(hook, d),))

    def to_json(self) -> dict[str, Any]:
        """The shape as a saved dictionary's cfg.json records it."""
        return {
            "sources": [[b.hook, b.d] for b in self.sources],
            "targets": [[b.hook, b.d] for b in self.targets],
            "skip": self.skip,
            "layers": None if self.layers is None else list(self.layers),
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Shape:
        def blocks(pairs: Any) -> tuple[Block, ...]:
            out = tuple(Block(str(hook), int(d)) for hook, d in pairs)
            if not out or any(b.d < 1 for b in out):
                raise ValueError("a shape needs blocks of positive width")
            return out

        layers = value.get("layers")
        return cls(
            blocks(value["sources"]),
            blocks(value["targets"]),
            bool(value.get("skip", False)),
            None if layers is None else tuple(int(layer) for layer in layers),
        )

    @property
    def d_in(self) -> int:
        return sum(block.d for block in self.sources)

    @property
    def d_out(self) -> int:
        return sum(block.d for block in self.targets)

    @property
    def cross_layer(self) -> bool:
        return self.layers is not None

    @property
    def reconstructs_its_input(self) -> bool:
        """Whether the targets are the sources (an SAE or a crosscoder): then the input is
        centred by the decoder's bias, as an SAE's is."""
        return self.sources == self.targets and not self.cross_layer

    @property
    def hooks(self) -> tuple[str, ...]:
        """Every hook the shape reads or reconstructs, sources first."""
        return tuple(dict.fromkeys(b.hook for b in (*self.sources, *self.targets)))

    @property
    def source_hooks(self) -> tuple[str, ...]:
        return tuple(b.hook for b in self.sources)

    @property
    def target_hooks(self) -> tuple[str, ...]:
        return tuple(b.hook for b in self.targets)

    def split_targets(self, y_BD: Tensor) -> dict[str, Tensor]:
        """The concatenated output cut into its target hooks' blocks."""
        return dict(
            zip(self.target_hooks, y_BD.split([b.d for b in self.targets], -1), strict=True)
        )

    def describe(self) -> str:
        """`blocks.1.mlp.hook_in -> blocks.1.hook_mlp_out` and the like, for messages."""
        if self.cross_layer:
            return f"cross-layer transcoder over layers {layer_range(self.layers)}"
        sources, targets = "+".join(self.source_hooks), "+".join(self.target_hooks)
        arrow = sources if self.reconstructs_its_input else f"{sources} -> {targets}"
        return arrow + (" (with a skip path)" if self.skip else "")


def split_hooks(text: str) -> tuple[str, ...]:
    """Hooks written `a+b+c`."""
    return tuple(part.strip() for part in text.split("+") if part.strip())


LAYERS = re.compile(r"(\d+)(?:-(\d+))?")


def parse_layers(text: str) -> tuple[int, ...]:
    """`0-3` -> (0, 1, 2, 3); `5` -> (5,); `0-3+6` is not accepted (layers are contiguous)."""
    match = LAYERS.fullmatch(text.strip())
    if not match:
        raise ValueError(f"layers={text!r} is not a layer range like 0-3")
    first, last = int(match.group(1)), int(match.group(2) or match.group(1))
    if last < first:
        raise ValueError(f"layers={text!r} runs backwards; write the lower layer first")
    return tuple(range(first, last + 1))


def layer_range(layers: tuple[int, ...] | None) -> str:
    if not layers:
        return ""
    return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])


def compact_hooks(hooks: tuple[str, ...]) -> str:
    """Hooks in a name: `blocks.0-2.hook_resid_post` when they differ only by a contiguous layer,
    else joined by `_`."""
    parts = [re.fullmatch(r"blocks\.(\d+)\.(.+)", hook) for hook in hooks]
    if len(hooks) > 1 and all(parts):
        layers = [int(p.group(1)) for p in parts]  # type: ignore[union-attr]
        suffixes = {p.group(2) for p in parts}  # type: ignore[union-attr]
        if len(suffixes) == 1 and layers == list(range(layers[0], layers[0] + len(layers))):
            return f"blocks.{layers[0]}-{layers[-1]}.{suffixes.pop()}"
    return "_".join(hooks)

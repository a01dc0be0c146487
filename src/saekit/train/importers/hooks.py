"""Which store hook a foreign dictionary reads, from the names its library gives.

saekit's hooks are TransformerBridge names on the unprocessed model (activations equal the
Hugging Face hidden states). A library's name maps onto one only where it means the same
tensor; anything else is refused with the way out (`sae import --hook/--target`).

- TransformerLens names (SAELens): the residual stream and the attention and MLP outputs keep
  their names on an unprocessed model; `blocks.L.ln2.hook_normalized` is the MLP's input
  (`blocks.L.mlp.hook_in`) only when LayerNorm was not folded (with folding it is the input
  before the norm's gain and bias, which the store does not hold).
- Hugging Face module paths (sparsify, SAELens' `AutoModelForCausalLM` SAEs): a module's output
  is what an SAE reads (`h.L`/`layers.L` → `blocks.L.hook_resid_post`, `....mlp` →
  `blocks.L.hook_mlp_out`, `....attn` → `blocks.L.hook_attn_out`); a transcoder of a module
  reads its input and predicts its output (`....mlp`: `blocks.L.mlp.hook_in` →
  `blocks.L.hook_mlp_out`; a whole layer: `blocks.L.hook_resid_pre` → `blocks.L.hook_resid_post`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from saekit.base.errors import SaekitError

HOW = "give the store hook it reads with sae import --hook (and --target for a transcoder)"

# TransformerLens names that mean the same tensor in saekit's stores
SAME_NAME = re.compile(
    r"blocks\.\d+\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_mlp_out|hook_attn_out"
    r"|mlp\.hook_in|mlp\.hook_out|mlp\.hook_post|ln2\.hook_out)"
)
LN2_NORMALIZED = re.compile(r"blocks\.(\d+)\.ln2\.hook_normalized")

# Hugging Face module paths of a decoder layer and its parts
HF_MODULE = re.compile(
    r"(?:(?:transformer|model|gpt_neox|model\.language_model)\.)?(?:h|layers)\.(\d+)"
    r"(?:\.(mlp|attn|self_attn|attention))?"
)
HF_PART = {None: "hook_resid_post", "mlp": "hook_mlp_out", "attn": "hook_attn_out"}


@dataclass(frozen=True)
class Hooks:
    """The store hook read and, for a transcoder, the store hook predicted."""

    hook: str
    target: str | None = None


def transformer_lens_hook(name: str | None, folded_ln: bool, where: str) -> str:
    """The store hook a TransformerLens hook name means."""
    if name is None:
        raise SaekitError(f"{where} names no hook; {HOW}")
    if SAME_NAME.fullmatch(name):
        return name
    match = LN2_NORMALIZED.fullmatch(name)
    if match and not folded_ln:
        return f"blocks.{match.group(1)}.mlp.hook_in"
    if match:
        raise SaekitError(
            f"{where} reads {name} of a model with LayerNorm folded: the input before the "
            "norm's gain and bias, which saekit's stores do not hold; it cannot be imported "
            "faithfully"
        )
    raise SaekitError(f"{where} reads {name}, which saekit cannot map to a store hook; {HOW}")


def module_hooks(module: str | None, transcoder: bool, where: str) -> Hooks:
    """The store hooks of a Hugging Face module path (see the module docstring)."""
    match = HF_MODULE.fullmatch(module or "")
    if match is None:
        raise SaekitError(
            f"{where} hooks module {module!r}, which saekit cannot map to a store hook; {HOW}"
        )
    layer, part = match.group(1), match.group(2)
    part = "attn" if part in ("self_attn", "attention") else part
    if not transcoder:
        return Hooks(f"blocks.{layer}.{HF_PART[part]}")
    if part == "attn":
        raise SaekitError(
            f"{where} transcodes attention module {module!r}, whose input saekit's stores do "
            f"not name; {HOW}"
        )
    source = "mlp.hook_in" if part == "mlp" else "hook_resid_pre"
    return Hooks(f"blocks.{layer}.{source}", f"blocks.{layer}.{HF_PART[part]}")


def resolve(
    hook: str | None, target: str | None, transcoder: bool, find: Callable[[], Hooks], where: str
) -> Hooks:
    """The hooks the user gave (`--hook`, `--target`), the rest mapped from the library's names
    by `find` (which refuses names it cannot map)."""
    if target is not None and not transcoder:
        raise SaekitError(f"--target is for transcoders; {where} reconstructs what it reads")
    if hook is not None and (target is not None or not transcoder):
        return Hooks(hook, target)
    found = find()
    return Hooks(hook or found.hook, target or found.target)

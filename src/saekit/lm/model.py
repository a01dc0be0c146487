"""A causal LM loaded through TransformerLens' TransformerBridge: its identity, hooks and widths."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saekit.base.errors import SaekitError
from saekit.base.fingerprint import files_fingerprint, text_fingerprint
from saekit.base.locations import absolute_location
from saekit.lm.forward import run_batch

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# How the weights are used (recorded in a store's identity): boot_transformers keeps the HF
# weights as they are, unlike HookedTransformer.from_pretrained (fold_ln, centre_writing_weights
# and centre_unembed by default), so every hook sees what the HF model computes.
WEIGHTS = "unfolded, uncentred (TransformerBridge defaults)"


@dataclass
class LanguageModel:
    """A TransformerBridge with frozen parameters, its tokenizer and what identifies it
    (`identity`: the model's location, hub revision, weights and tokenizer fingerprints)."""

    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    name: str
    identity: dict[str, Any]

    @property
    def tokenizer(self) -> Any:
        return self.bridge.tokenizer

    @property
    def n_ctx(self) -> int:
        return int(self.bridge.cfg.n_ctx)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def d_vocab(self) -> int:
        return int(self.bridge.cfg.d_vocab)

    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

    @property
    def hook_names(self) -> list[str]:
        """The hooks this model can capture, in the bridge's order. TransformerLens also lists
        hooks it keeps switched off (`blocks.L.hook_mlp_in`, `blocks.L.attn.hook_result`, ...);
        they are left out."""
        return [name for name in self.bridge.hook_dict if self._switched_off(name) is None]

    def _switched_off(self, hook: str) -> str | None:
        """Why TransformerLens refuses to attach to `hook` (a switched-off hook), or None."""
        check = getattr(self.bridge, "check_hooks_to_add", None)
        if check is None:
            return None
        try:
            check(self.bridge.hook_dict[hook], hook, lambda x, hook: x, dir="fwd")
        except ValueError as error:
            return str(error).strip().splitlines()[0] if str(error).strip() else "switched off"
        return None

    def check_hooks(self, hooks: list[str]) -> None:
        """Every hook must exist and be capturable; on a typo the closest valid names are
        suggested."""
        if not hooks:
            raise SaekitError("give at least one --hook, e.g. --hook blocks.0.hook_resid_post")
        if len(set(hooks)) != len(hooks):
            raise SaekitError(f"a hook is given twice in {hooks}")
        for hook in hooks:
            if hook not in self.bridge.hook_dict:
                close = difflib.get_close_matches(hook, self.hook_names, n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise SaekitError(f"model {self.name} has no hook '{hook}'{hint}")
            if self._switched_off(hook) is not None:
                raise SaekitError(
                    f"hook '{hook}' of model {self.name} is switched off in TransformerLens "
                    f"(it would never fire); {_instead(hook)}"
                )

    def hook_widths(self, hooks: list[str]) -> dict[str, int]:
        """Run two tokens through the model; every hook must give [batch, position, d]."""
        probe_BT = torch.full((1, 2), self.tokenizer.eos_token_id or 0, device=self.device)
        out = run_batch(self.bridge, probe_BT, hooks, gradients=False)
        widths = {}
        for hook, x in out.activations.items():
            if x.ndim != 3 or tuple(x.shape[:2]) != (1, 2):
                raise SaekitError(
                    f"hook {hook} gives shape {list(x.shape)}, not [batch, position, d]; "
                    "choose a hook on the residual stream or another per-token vector"
                )
            widths[hook] = int(x.shape[-1])
        return widths


def _instead(hook: str) -> str:
    """What to capture instead of a switched-off hook."""
    block = hook.rsplit(".", 1)[0]
    if hook.endswith(".hook_mlp_in"):
        return (
            f"the MLP's input (after ln2) is {block}.mlp.hook_in, the residual stream before "
            f"ln2 {block}.hook_resid_mid"
        )
    if hook.endswith(".attn.hook_result"):
        return f"the attention output summed over heads is {block.rsplit('.', 1)[0]}.hook_attn_out"
    return "choose another hook"


def _model_files(name: str) -> tuple[Path | None, str | None]:
    """(directory holding the weights, hub revision) for a local directory or a cached hub model."""
    local = Path(name).expanduser()
    if local.is_dir():
        return local, None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "config.json")
    if isinstance(cached, str):
        snapshot = Path(cached).parent
        return snapshot, snapshot.name
    return None, None


def load_model(name: str, device: torch.device) -> LanguageModel:
    """Load a Hugging Face causal LM (hub name or local HF-format directory), parameters frozen."""
    local = Path(name).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise SaekitError(
            f"{name} is not a Hugging Face model directory (no config.json); "
            "give a hub name or a directory made with save_pretrained"
        )
    from transformer_lens.model_bridge import TransformerBridge
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        bridge = TransformerBridge.boot_transformers(
            str(local) if local.exists() else name, device=str(device)
        )
    except Exception as error:  # HF raises OSError, ValueError, HTTP errors, ... for bad models
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        offline = " (no network: use a local directory)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise SaekitError(f"cannot load model {name}{offline}: {reason}") from None
    bridge.eval()
    for parameter in bridge.parameters():
        parameter.requires_grad_(False)
    if bridge.tokenizer is None:
        raise SaekitError(f"model {name} comes without a tokenizer; save one beside it")
    _, revision = _model_files(name)
    identity = {
        "model": absolute_location(local) if local.exists() else name,
        "model_revision": revision,
        "weights_fingerprint": weights_fingerprint(name),
        "tokenizer_fingerprint": tokenizer_fingerprint(bridge.tokenizer),
        "weights": WEIGHTS,
        "vocab_size": int(bridge.cfg.d_vocab),
    }
    return LanguageModel(bridge=bridge, name=name, identity=identity)


def weights_fingerprint(name: str) -> str | None:
    """The fingerprint of a model's weight files (a local directory, or a hub model in the local
    cache), read from the files alone, without loading the model; None when they are not here."""
    weights_dir, _ = _model_files(name)
    if weights_dir is None:
        return None
    return files_fingerprint([p for p in weights_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES])


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of the tokenizer's full serialisation (vocabulary, merges, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return text_fingerprint(backend.to_str())
    return text_fingerprint(repr(sorted(tokenizer.get_vocab().items())))

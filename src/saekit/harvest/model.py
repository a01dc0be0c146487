"""Load a causal LM through TransformerLens' TransformerBridge and check hook names against it."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saekit.cache_format.location import absolute_location
from saekit.errors import SaekitError
from saekit.fingerprint import files_fingerprint, text_fingerprint

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass
class LoadedModel:
    """A TransformerBridge with frozen parameters, its tokenizer and what identifies it."""

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
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device


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


def load_model(name: str, device: torch.device) -> LoadedModel:
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
    weights_dir, revision = _model_files(name)
    identity = {
        "model": absolute_location(local) if local.exists() else name,
        "model_revision": revision,
        "weights_fingerprint": files_fingerprint(
            [p for p in weights_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES]
        )
        if weights_dir
        else None,
        "tokenizer_fingerprint": tokenizer_fingerprint(bridge.tokenizer),
    }
    return LoadedModel(bridge=bridge, name=name, identity=identity)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of the tokenizer's full serialisation (vocabulary, merges, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return text_fingerprint(backend.to_str())
    return text_fingerprint(repr(sorted(tokenizer.get_vocab().items())))


def check_hooks(model: LoadedModel, hooks: list[str]) -> None:
    """Every hook must exist; on a typo the closest valid names are suggested."""
    if not hooks:
        raise SaekitError("give at least one --hook, e.g. --hook blocks.0.hook_resid_post")
    if len(set(hooks)) != len(hooks):
        raise SaekitError(f"a hook is given twice in {hooks}")
    valid = list(model.bridge.hook_dict)
    for hook in hooks:
        if hook not in model.bridge.hook_dict:
            close = difflib.get_close_matches(hook, valid, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise SaekitError(f"model {model.name} has no hook '{hook}'{hint}")


def hook_widths(model: LoadedModel, hooks: list[str]) -> dict[str, int]:
    """Run two tokens through the model; every hook must give [batch, position, d]."""
    probe = torch.full((1, 2), model.tokenizer.eos_token_id or 0, device=model.device)
    from saekit.harvest.forward import run_batch

    out = run_batch(model.bridge, probe, hooks, gradients=False)
    widths = {}
    for hook, x in out.activations.items():
        if x.ndim != 3 or tuple(x.shape[:2]) != (1, 2):
            raise SaekitError(
                f"hook {hook} gives shape {list(x.shape)}, not [batch, position, d]; "
                "choose a hook on the residual stream or another per-token vector"
            )
        widths[hook] = int(x.shape[-1])
    return widths

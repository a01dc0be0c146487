"""Saved SAEs: `RUN/saes/<name>/` with the input scaling folded in, plus a SAELens export.

    saes/<name>/sae.safetensors     the SAE's state dict (raw-activation space)
    saes/<name>/cfg.json            `SAEConfig`: variant, hook, shapes, options, store, training
    saes/<name>/saelens/            SAELens' on-disk layout: cfg.json + sae_weights.safetensors

`load_sae(directory)` is the entry point for evaluation.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from saekit.errors import SaekitError
from saekit.train.atomic import write_json, write_safetensors
from saekit.train.sae import SAE
from saekit.train.sae_config import SAE_FORMAT, SAEConfig
from saekit.train.spec import ResolvedSpec
from saekit.train.variants import VARIANTS

WEIGHTS_FILE = "sae.safetensors"
CFG_FILE = "cfg.json"
SAELENS_DIR = "saelens"
SAELENS_WEIGHTS_FILE = "sae_weights.safetensors"


def save_sae(trained: SAE, directory: Path, cfg: SAEConfig) -> None:
    """Write an SAE trained on `input_scale · x` so that it takes raw activations."""
    sae = copy.deepcopy(trained).cpu()
    sae.fold_input_scale_(cfg.input_scale)
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(directory / WEIGHTS_FILE, sae.state_for_saving(), {"format": SAE_FORMAT})
    write_json(directory / CFG_FILE, dataclasses.asdict(cfg))
    export_saelens(sae, directory / SAELENS_DIR, cfg)


def export_saelens(sae: SAE, directory: Path, cfg: SAEConfig) -> None:
    """SAELens' layout: W_enc [d_in, d_sae], W_dec [d_sae, d_in], variant-specific extras.

    Variants SAELens lacks map onto what computes the same at inference: BatchTopK and Feature
    Choice as JumpReLU with their learnt thresholds, g-SAE as TopK (plain mode).
    """
    activation = sae.activation
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {
        "hook_name": cfg.hook,
        "model_name": cfg.store["identity"].get("model"),
        "context_size": cfg.store["identity"].get("context_size"),
        "saekit": {"name": cfg.name, "variant": cfg.variant, "options": cfg.options},
    }
    saelens_cfg = {
        "architecture": activation.saelens_architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **activation.saelens_cfg(),
        "metadata": metadata,
    }
    write_safetensors(directory / SAELENS_WEIGHTS_FILE, activation.saelens_tensors(sae))
    write_json(directory / CFG_FILE, saelens_cfg)


def load_sae(directory: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Load a saved SAE (raw-activation space, eval mode); its `SAEConfig` is `sae.cfg`."""
    directory = Path(directory)
    try:
        values = json.loads((directory / CFG_FILE).read_text())
    except (FileNotFoundError, NotADirectoryError):
        raise SaekitError(f"{directory} holds no saved SAE (no {CFG_FILE})") from None
    if values.get("format") != SAE_FORMAT:
        raise SaekitError(f"{directory / CFG_FILE} does not describe a saekit SAE")
    cfg = SAEConfig.from_dict(values)
    if cfg.variant not in VARIANTS:
        raise SaekitError(f"{directory}: unknown variant {cfg.variant!r}; upgrade saekit")
    options = VARIANTS[cfg.variant].options_type(**cfg.options)
    sae = ResolvedSpec(cfg.name, cfg.variant, options).build(cfg.d_in)
    sae.load_state_dict(load_file(directory / WEIGHTS_FILE))
    sae.cfg = cfg
    return sae.to(device).eval()

"""EleutherAI sparsify's saved `SparseCoder` (`SparseCoder.save_to_disk`: a folder named after
its hookpoint holding `cfg.json` and `sae.safetensors`; checked against eai-sparsify 1.3).

    f = TopK_k(ReLU(encoder(x − b_dec)))      an SAE (transcode false)
    f = TopK_k(ReLU(encoder(x)))              a transcoder
    ŷ = W_decᵀ f + b_dec (+ W_skip x)         skip_connection

An SAE is saekit's `topk`; a transcoder is a `topk` transcoder with `b_in = 0`, and a skip
connection is saekit's skip path (`skip=true`, on an SAE too). The hooks come from the folder's
name, a Hugging Face module path (`hooks.module_hooks`). A checkpoint of sparsify before
February 2025 has no `transcode` key (its run's `config.json` has it): such a transcoder
centred its input by `b_dec`, the output's mean, which saekit keeps as the input bias `b_in`.
Refused: the `groupmax` activation (no saekit variant computes it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saekit.base.errors import SaekitError
from saekit.train.importers import hooks as hook_names
from saekit.train.importers.foreign import (
    Foreign,
    check_tensors,
    float32,
    read_json,
    read_safetensors,
)
from saekit.train.sae_config import SAE_FORMAT

LIBRARY = "sparsify"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae.safetensors"
RUN_CONFIG = "config.json"  # the training run's, one level up
WHAT = "a sparsify SparseCoder folder"


def recognises(directory: Path) -> bool:
    if not (directory / CFG_FILE).is_file() or not (directory / WEIGHTS_FILE).is_file():
        return False
    try:
        cfg = read_json(directory / CFG_FILE, WHAT)
    except SaekitError:
        return False
    return cfg.get("format") != SAE_FORMAT and "d_in" in cfg and "k" in cfg


def read(directory: Path, hook: str | None = None, target: str | None = None) -> Foreign:
    """The folder as a saekit dictionary, or one line saying why it cannot be one."""
    cfg = read_json(directory / CFG_FILE, WHAT)
    where = f"sparsify SparseCoder {directory}"
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise SaekitError(
            f"{where} uses the {activation!r} activation, which no saekit variant computes; "
            "saekit imports sparsify's topk coders"
        )
    try:
        d_in, k = int(cfg["d_in"]), int(cfg["k"])
        d_sae = int(cfg.get("num_latents") or 0) or d_in * int(cfg.get("expansion_factor", 32))
    except (KeyError, TypeError, ValueError):
        raise SaekitError(f"{directory / CFG_FILE} is not {WHAT}: d_in, k or widths") from None
    skip = bool(cfg.get("skip_connection", False))
    transcode, centred_by_output = _transcodes(cfg, directory)

    def find() -> hook_names.Hooks:
        return hook_names.module_hooks(directory.name, transcode, where)

    chosen = hook_names.resolve(hook, target, transcode, find, where)
    raw = read_safetensors(directory / WEIGHTS_FILE, WHAT)
    expected = {
        "encoder.weight": (d_sae, d_in),
        "encoder.bias": (d_sae,),
        "W_dec": (d_sae, d_in),
        "b_dec": (d_in,),
    }
    if skip:
        expected["W_skip"] = (d_in, d_in)
    check_tensors(directory / WEIGHTS_FILE, raw, expected, WHAT)
    raw = float32(raw)
    tensors = {
        "W_enc": raw["encoder.weight"],
        "b_enc": raw["encoder.bias"],
        "W_dec": raw["W_dec"].T,
        "b_dec": raw["b_dec"],
    }
    if transcode:
        tensors["b_in"] = raw["b_dec"] if centred_by_output else raw["b_dec"].new_zeros(d_in)
    if skip:
        tensors["W_skip"] = raw["W_skip"]
    return Foreign(
        library=LIBRARY,
        version=None,  # sparsify records none
        architecture="transcoder" if transcode else "sae",
        source=directory,
        config=cfg,
        variant="topk",
        options={"k": k},
        hook=chosen.hook,
        target=chosen.target if transcode else None,
        skip=skip,
        tensors=tensors,
        library_hooks={"hookpoint": directory.name},
    )


def _transcodes(cfg: dict[str, Any], directory: Path) -> tuple[bool, bool]:
    """(whether it is a transcoder, whether its encoder centres by `b_dec`, the output's mean:
    a transcoder of sparsify before February 2025, whose cfg.json lacks `transcode`)."""
    if "transcode" in cfg:
        return bool(cfg["transcode"]), False
    run_config = directory.parent / RUN_CONFIG
    old_run = read_json(run_config, "a sparsify run config") if run_config.is_file() else {}
    old_transcoder = bool(old_run.get("transcode", False))
    return old_transcoder, old_transcoder

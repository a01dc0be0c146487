"""dictionary_learning's saved dictionary (`trainSAE`'s `trainer_<i>/`: `ae.pt`, a `torch.save`d
state dict, and `config.json` naming the class in `trainer.dict_class`; checked against
dictionary-learning 0.1.0).

    AutoEncoder             relu        `bias` centres the input and is the decoder's bias
    AutoEncoderNew          relu        no input centring: `b_enc + W_enc b_dec`
    GatedAutoEncoder        gated
    JumpReluAutoEncoder     jumprelu    `ReLU(z·1[z > θ])` is `z·1[z > max(θ, 0)]`; no centring
    AutoEncoderTopK         topk
    BatchTopKSAE            batchtopk   `ReLU(z)·1[ReLU(z) > θ]` is `z·1[z > max(θ, 0)]` (θ < 0:
                                        never learnt, every positive code passes)
    MatryoshkaBatchTopKSAE  matryoshka  `group_sizes` as `groups`; the threshold as BatchTopK's

Activation normalisation (`trainSAE(normalize_activations=True)`, `norm_factor` in the config)
is already folded in: dictionary_learning scales the biases (and thresholds) by the factor
before it saves `ae.pt`, which then takes raw activations. A dictionary trained as a
transcoder records nothing that says so: `--target` makes the import a transcoder (the bias
its encoder subtracts becomes saekit's input bias `b_in`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.base.errors import SaekitError
from saekit.train.importers import hooks as hook_names
from saekit.train.importers.foreign import (
    Foreign,
    batch_threshold_state,
    check_tensors,
    float32,
    fold_input_bias,
    gated_state,
    jumprelu_state,
    read_json,
)

LIBRARY = "dictionary_learning"
WEIGHTS_FILE = "ae.pt"
CONFIG_FILE = "config.json"
WHAT = "a dictionary_learning dictionary"
# SAEBench-style submodule names: resid_post_layer_3 and the like
SUBMODULE = re.compile(r"(resid_pre|resid_mid|resid_post|mlp_out|attn_out)_layer_(\d+)")


def recognises(directory: Path) -> bool:
    return (directory / WEIGHTS_FILE).is_file() and (directory / CONFIG_FILE).is_file()


def read(directory: Path, hook: str | None = None, target: str | None = None) -> Foreign:
    """The folder as a saekit dictionary, or one line saying why it cannot be one."""
    config = read_json(directory / CONFIG_FILE, f"{WHAT}'s config")
    trainer = config.get("trainer")
    if not isinstance(trainer, dict) or "dict_class" not in trainer:
        raise SaekitError(f"{directory / CONFIG_FILE} names no trainer.dict_class; not {WHAT}")
    dict_class = str(trainer["dict_class"])
    where = f"dictionary_learning {dict_class} {directory}"
    if dict_class not in CLASSES:
        raise SaekitError(
            f"{where}: saekit does not import {dict_class} (it imports "
            f"{', '.join(CLASSES)}: no saekit variant computes the others)"
        )
    transcoder = target is not None

    def find() -> hook_names.Hooks:
        return _hooks(trainer, where)

    chosen = hook_names.resolve(hook, target, transcoder, find, where)
    state = _load(directory / WEIGHTS_FILE)
    variant, options, tensors, centre_D = CLASSES[dict_class](state, directory / WEIGHTS_FILE)
    if transcoder:  # the bias its encoder subtracts is the input's
        tensors["b_in"] = centre_D
    elif centre_D is not tensors["b_dec"]:  # saekit centres an SAE's input by b_dec
        tensors["b_enc"] = fold_input_bias(
            tensors["W_enc"], tensors["b_enc"], tensors["b_dec"] - centre_D
        )
        if variant == "gated":
            scaled_FD = tensors["activation.r_mag"].exp()[:, None] * tensors["W_enc"]
            tensors["activation.b_mag"] = fold_input_bias(
                scaled_FD, tensors["activation.b_mag"], tensors["b_dec"] - centre_D
            )
    return Foreign(
        library=LIBRARY,
        version=None,  # dictionary_learning records none
        architecture=dict_class,
        source=directory,
        config=config,
        variant=variant,
        options=options,
        hook=chosen.hook,
        target=chosen.target,
        skip=False,
        tensors=tensors,
        library_hooks={"submodule_name": trainer.get("submodule_name")},
    )


def _load(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not its own
        raise SaekitError(f"{path} cannot be read as {WHAT}'s ae.pt ({error})") from None
    if not isinstance(state, dict) or not all(isinstance(t, Tensor) for t in state.values()):
        raise SaekitError(f"{path} holds no state dict of tensors; it is not {WHAT}'s ae.pt")
    return state


def _hooks(trainer: dict[str, Any], where: str) -> hook_names.Hooks:
    name = trainer.get("submodule_name")
    match = SUBMODULE.fullmatch(str(name))
    if match:
        return hook_names.Hooks(f"blocks.{match.group(2)}.hook_{match.group(1)}")
    return hook_names.module_hooks(name, False, where)


# -- one mapping per dictionary class: (variant, keys, saekit state, the bias the encoder
#    subtracts from its input) ------------------------------------------------------------------

Mapped = tuple[str, dict[str, Any], dict[str, Tensor], Tensor]


def _linear_shapes(state: dict[str, Tensor], path: Path, weight: str) -> tuple[int, int]:
    """(latents, input width) from an encoder weight stored [F, D] (`nn.Linear`)."""
    if weight not in state or state[weight].dim() != 2:
        raise SaekitError(f"{path} holds no 2-d {weight}; it is not {WHAT}'s ae.pt")
    d_sae, d_in = state[weight].shape
    return int(d_sae), int(d_in)


def _auto_encoder(state: dict[str, Tensor], path: Path) -> Mapped:
    d_sae, d = _linear_shapes(state, path, "encoder.weight")
    expected = {"encoder.weight": (d_sae, d), "encoder.bias": (d_sae,)}
    check_tensors(path, state, {**expected, "decoder.weight": (d, d_sae), "bias": (d,)}, WHAT)
    state = float32(state)
    tensors = {
        "W_enc": state["encoder.weight"],
        "b_enc": state["encoder.bias"],
        "W_dec": state["decoder.weight"],
        "b_dec": state["bias"],
    }
    return "relu", {}, tensors, tensors["b_dec"]


def _auto_encoder_new(state: dict[str, Tensor], path: Path) -> Mapped:
    d_sae, d = _linear_shapes(state, path, "encoder.weight")
    expected = {"encoder.weight": (d_sae, d), "encoder.bias": (d_sae,)}
    expected.update({"decoder.weight": (d, d_sae), "decoder.bias": (d,)})
    check_tensors(path, state, expected, WHAT)
    state = float32(state)
    tensors = {
        "W_enc": state["encoder.weight"],
        "b_enc": state["encoder.bias"],
        "W_dec": state["decoder.weight"],
        "b_dec": state["decoder.bias"],
    }
    return "relu", {}, tensors, torch.zeros(d)


def _gated(state: dict[str, Tensor], path: Path) -> Mapped:
    d_sae, d = _linear_shapes(state, path, "encoder.weight")
    expected = {"encoder.weight": (d_sae, d), "decoder.weight": (d, d_sae)}
    expected.update({key: (d_sae,) for key in ("r_mag", "gate_bias", "mag_bias")})
    check_tensors(path, state, {**expected, "decoder_bias": (d,)}, WHAT)
    state = float32(state)
    tensors = {
        "W_enc": state["encoder.weight"],
        "b_enc": state["gate_bias"],
        "W_dec": state["decoder.weight"],
        "b_dec": state["decoder_bias"],
        **gated_state(state["r_mag"], state["mag_bias"]),
    }
    return "gated", {}, tensors, tensors["b_dec"]


def _jump_relu(state: dict[str, Tensor], path: Path) -> Mapped:
    if "W_enc" not in state or state["W_enc"].dim() != 2:
        raise SaekitError(f"{path} holds no 2-d W_enc; it is not {WHAT}'s ae.pt")
    d, d_sae = (int(n) for n in state["W_enc"].shape)
    expected = {"W_enc": (d, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d), "b_dec": (d,)}
    check_tensors(path, state, {**expected, "threshold": (d_sae,)}, WHAT)
    state = float32(state)
    tensors = {
        "W_enc": state["W_enc"].T,
        "b_enc": state["b_enc"],
        "W_dec": state["W_dec"].T,
        "b_dec": state["b_dec"],
        **jumprelu_state(state["threshold"]),
    }
    return "jumprelu", {}, tensors, torch.zeros(d)  # apply_b_dec_to_input is off when saved


def _top_k(state: dict[str, Tensor], path: Path) -> Mapped:
    d_sae, d = _linear_shapes(state, path, "encoder.weight")
    expected = {"encoder.weight": (d_sae, d), "encoder.bias": (d_sae,), "b_dec": (d,)}
    check_tensors(
        path, state, {**expected, "decoder.weight": (d, d_sae), "k": (), "threshold": ()}, WHAT
    )
    state = float32(state)
    tensors = {
        "W_enc": state["encoder.weight"],
        "b_enc": state["encoder.bias"],
        "W_dec": state["decoder.weight"],
        "b_dec": state["b_dec"],
    }
    return "topk", {"k": int(state["k"])}, tensors, tensors["b_dec"]


def _batch_top_k(state: dict[str, Tensor], path: Path) -> Mapped:
    _, options, tensors, centre_D = _top_k(state, path)
    tensors.update(_threshold(state))
    return "batchtopk", options, tensors, centre_D


def _matryoshka(state: dict[str, Tensor], path: Path) -> Mapped:
    if "W_enc" not in state or state["W_enc"].dim() != 2 or "group_sizes" not in state:
        raise SaekitError(f"{path} holds no 2-d W_enc or no group_sizes; it is not {WHAT}'s ae.pt")
    d, d_sae = (int(n) for n in state["W_enc"].shape)
    groups = [int(size) for size in state["group_sizes"].tolist()]
    expected = {"W_enc": (d, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d), "b_dec": (d,)}
    expected.update({"k": (), "threshold": (), "group_sizes": (len(groups),)})
    check_tensors(path, state, expected, WHAT)
    tensors = {
        "W_enc": state["W_enc"].T,
        "b_enc": state["b_enc"],
        "W_dec": state["W_dec"].T,
        "b_dec": state["b_dec"],
    }
    tensors = float32(tensors)
    tensors.update(_threshold(state))
    options = {"k": int(state["k"]), "groups": "+".join(map(str, groups))}
    return "matryoshka", options, tensors, tensors["b_dec"]


def _threshold(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """`ReLU(z)·1[ReLU(z) > θ]` is `z·1[z > max(θ, 0)]`: θ < 0, a threshold never learnt,
    keeps every positive code."""
    return batch_threshold_state(max(float(state["threshold"]), 0.0))


CLASSES = {
    "AutoEncoder": _auto_encoder,
    "AutoEncoderNew": _auto_encoder_new,
    "GatedAutoEncoder": _gated,
    "JumpReluAutoEncoder": _jump_relu,
    "AutoEncoderTopK": _top_k,
    "BatchTopKSAE": _batch_top_k,
    "MatryoshkaBatchTopKSAE": _matryoshka,
}

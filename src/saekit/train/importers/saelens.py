"""SAELens' saved-SAE folder (`cfg.json` + `sae_weights.safetensors`, as `SAE.save_model` and
`TrainingSAE.save_inference_model` write them; checked against sae-lens 6.54).

    standard      relu      `apply_b_dec_to_input: false` folded in: `b_enc + W_enc b_dec`
    topk          topk      `rescale_acts_by_decoder_norm`: the decoder norms into the encoder
    jumprelu      jumprelu  (also SAELens' BatchTopK and Matryoshka) thresholds ≤ 0 as 0
    gated         gated     `b_gate` as `b_enc`; `b_mag` folded like `b_enc`
    transcoder, skip_transcoder, jumprelu_transcoder, jumprelu_skip_transcoder
                  relu / jumprelu transcoders (`target=`, `skip=`), `b_in = 0`

Refused: another architecture (AbsTopK, temporal, matching pursuit: no saekit variant computes
them; training classes: SAELens' own loader does not read them), `normalize_activations` other
than `none` (a per-token norm cannot be folded into a linear encoder; a dataset-wide scale or
whitening is not in the folder), per-head SAEs (`hook_z`, `hook_head_index`), and weights
processed by TransformerLens (`center_writing_weights`: every activation it read was centred).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from saekit.base.errors import SaekitError
from saekit.train.formats import SAELENS_TRANSCODERS
from saekit.train.importers import hooks as hook_names
from saekit.train.importers.foreign import (
    Foreign,
    check_tensors,
    float32,
    fold_input_bias,
    gated_state,
    jumprelu_state,
    read_json,
    read_safetensors,
)

LIBRARY = "sae_lens"
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
WHAT = "a SAELens SAE folder"

# SAELens SAE architectures (reconstructing their input) -> saekit variant; the inverse of each
# variant's `saelens_architecture` where it is one-to-one
SAE_VARIANTS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}
PROCESSING = ("center_writing_weights", "fold_value_biases", "refactor_factored_attn_matrices")
NORMALISATION_REFUSALS = {
    "expected_average_only_in": "scales its inputs by a dataset-wide factor that the folder "
    "does not hold (SAELens folds it into the weights when training ends; fold it with "
    "fold_activation_norm_scaling_factor and save the SAE again)",
    "covariance_whitening": "whitens its inputs with statistics that the folder does not hold "
    "(fold them with fold_activation_whitening and save the SAE again)",
    "constant_norm_rescale": "rescales every token by its own norm, which no linear encoder "
    "can fold in",
    "layer_norm": "normalises every token on its own, which no linear encoder can fold in",
}


def recognises(directory: Path) -> bool:
    return (directory / CFG_FILE).is_file() and (directory / WEIGHTS_FILE).is_file()


def read(directory: Path, hook: str | None = None, target: str | None = None) -> Foreign:
    """The folder as a saekit dictionary, or one line saying why it cannot be one."""
    cfg = read_json(directory / CFG_FILE, WHAT)
    where = f"SAELens SAE {directory}"
    metadata = _metadata(cfg)
    architecture = str(cfg.get("architecture", "standard"))
    transcoder = architecture in SAELENS_TRANSCODERS
    if architecture not in SAE_VARIANTS and not transcoder:
        raise SaekitError(
            f"{where} has architecture {architecture!r}, which saekit does not import (it "
            f"imports {', '.join([*SAE_VARIANTS, *SAELENS_TRANSCODERS])}: no saekit variant "
            "computes the others)"
        )
    _check_inputs(cfg, metadata, where)
    library_hooks = {"hook_name": metadata.get("hook_name")}
    if transcoder:
        library_hooks["hook_name_out"] = metadata.get("hook_name_out")

    def find() -> hook_names.Hooks:
        return _hooks(metadata, transcoder, where)

    chosen = hook_names.resolve(hook, target, transcoder, find, where)
    raw = read_safetensors(directory / WEIGHTS_FILE, WHAT)
    if transcoder:
        variant, tensors = _transcoder(architecture, cfg, raw, directory)
        skip = SAELENS_TRANSCODERS[architecture][1]
    else:
        variant, skip = SAE_VARIANTS[architecture], False
        tensors = _sae(architecture, cfg, raw, directory)
    options = {"k": _dims(cfg, directory, "k")[0]} if variant == "topk" else {}
    return Foreign(
        library=LIBRARY,
        version=metadata.get("sae_lens_version"),
        architecture=architecture,
        source=directory,
        config=cfg,
        variant=variant,
        options=options,
        hook=chosen.hook,
        target=chosen.target if transcoder else None,
        skip=skip,
        tensors=float32(tensors),
        library_hooks=library_hooks,
    )


def _metadata(cfg: dict[str, Any]) -> dict[str, Any]:
    """The 6.x `metadata`; a folder of an earlier SAELens keeps those keys at the top level."""
    metadata = cfg.get("metadata")
    if isinstance(metadata, dict):
        return metadata
    renamed = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index"}
    return {renamed.get(key, key): value for key, value in cfg.items()}


def _check_inputs(cfg: dict[str, Any], metadata: dict[str, Any], where: str) -> None:
    """Refuse what the import cannot fold in: input normalisation, per-head inputs, weights
    processed by TransformerLens."""
    normalisation = cfg.get("normalize_activations", "none")
    if normalisation in (None, False):
        normalisation = "none"
    if normalisation is True:
        normalisation = "expected_average_only_in"  # what SAELens reads `true` as
    if normalisation != "none":
        reason = NORMALISATION_REFUSALS.get(str(normalisation), "normalises its inputs")
        raise SaekitError(
            f"{where} has normalize_activations={normalisation!r}: it {reason}; it cannot be "
            "imported faithfully"
        )
    if cfg.get("reshape_activations", "none") != "none" or metadata.get("hook_head_index"):
        raise SaekitError(
            f"{where} reads attention heads (hook_z or a head index), which a store does not "
            "hold as one vector per token; it cannot be imported"
        )
    if metadata.get("model_class_name") == "AutoModelForCausalLM":
        return
    kwargs = metadata.get("model_from_pretrained_kwargs")
    if kwargs is None and not _version_6(metadata.get("sae_lens_version")):
        raise SaekitError(
            f"{where} was saved by SAELens before 6.0 and does not say how TransformerLens "
            "processed the model's weights (its default centres the residual stream); it "
            "cannot be imported faithfully"
        )
    processed = [key for key in PROCESSING if (kwargs or {}).get(key)]
    if processed:
        raise SaekitError(
            f"{where} was trained on a model loaded with {', '.join(processed)}: "
            "TransformerLens changed every activation it read (centred, refolded), and saekit's "
            "stores hold the unprocessed model's; it cannot be imported faithfully"
        )


def _version_6(version: Any) -> bool:
    """Whether a `sae_lens_version` is 6 or later (its layout and its unprocessed default)."""
    major = str(version).split(".")[0]
    return major.isdigit() and int(major) >= 6


def _hooks(metadata: dict[str, Any], transcoder: bool, where: str) -> hook_names.Hooks:
    if metadata.get("model_class_name") == "AutoModelForCausalLM":
        name = metadata.get("hf_hook_name") or metadata.get("hook_name")
        return hook_names.module_hooks(name, transcoder, where)
    folded_ln = bool((metadata.get("model_from_pretrained_kwargs") or {}).get("fold_ln"))
    hook = hook_names.transformer_lens_hook(metadata.get("hook_name"), folded_ln, where)
    if not transcoder:
        return hook_names.Hooks(hook)
    out = hook_names.transformer_lens_hook(metadata.get("hook_name_out"), folded_ln, where)
    return hook_names.Hooks(hook, out)


def _dims(cfg: dict[str, Any], directory: Path, *keys: str) -> list[int]:
    try:
        return [int(cfg[key]) for key in keys]
    except (KeyError, TypeError, ValueError):
        raise SaekitError(
            f"{directory / CFG_FILE} lacks one of {', '.join(keys)}; it is not {WHAT}"
        ) from None


def _sae(
    architecture: str, cfg: dict[str, Any], raw: dict[str, Tensor], directory: Path
) -> dict[str, Tensor]:
    """saekit's state of a SAELens SAE that reconstructs its input."""
    d_in, d_sae = _dims(cfg, directory, "d_in", "d_sae")
    encoder_bias = "b_gate" if architecture == "gated" else "b_enc"
    expected = {"W_enc": (d_in, d_sae), encoder_bias: (d_sae,), "W_dec": (d_sae, d_in)}
    expected["b_dec"] = (d_in,)
    if architecture == "jumprelu":
        expected["threshold"] = (d_sae,)
    if architecture == "gated":
        expected.update(r_mag=(d_sae,), b_mag=(d_sae,))
    check_tensors(directory / WEIGHTS_FILE, raw, expected, f"a SAELens {architecture} SAE")
    raw = float32(raw)
    W_enc_FD, W_dec_DF, b_dec_D = raw["W_enc"].T, raw["W_dec"].T, raw["b_dec"]
    b_enc_F = raw[encoder_bias]
    if not cfg.get("apply_b_dec_to_input", True):  # saekit always centres by b_dec
        b_enc_F = fold_input_bias(W_enc_FD, b_enc_F, b_dec_D)
    tensors = {"W_enc": W_enc_FD, "b_enc": b_enc_F, "W_dec": W_dec_DF, "b_dec": b_dec_D}
    if architecture == "topk" and cfg.get("rescale_acts_by_decoder_norm", False):
        # SAELens selects on h·‖d_i‖ and decodes f/‖d_i‖: the same codes as an encoder whose
        # rows are scaled by the norms and a decoder whose columns are divided by them
        norm_F = raw["W_dec"].norm(dim=-1)
        tensors.update(
            W_enc=norm_F[:, None] * W_enc_FD, b_enc=norm_F * b_enc_F, W_dec=W_dec_DF / norm_F
        )
    if architecture == "jumprelu":
        tensors.update(jumprelu_state(raw["threshold"]))
    if architecture == "gated":
        b_mag_F = raw["b_mag"]
        if not cfg.get("apply_b_dec_to_input", True):
            b_mag_F = fold_input_bias(raw["r_mag"].exp()[:, None] * W_enc_FD, b_mag_F, b_dec_D)
        tensors.update(gated_state(raw["r_mag"], b_mag_F))
    return tensors


def _transcoder(
    architecture: str, cfg: dict[str, Any], raw: dict[str, Tensor], directory: Path
) -> tuple[str, dict[str, Tensor]]:
    """(variant, saekit state) of a SAELens transcoder: `act(x W_enc + b_enc) W_dec + b_dec
    (+ x W_skipᵀ)`, saekit's transcoder with b_in = 0."""
    d_in, d_sae, d_out = _dims(cfg, directory, "d_in", "d_sae", "d_out")
    activation, skip = SAELENS_TRANSCODERS[architecture]
    if cfg.get("apply_b_dec_to_input", True):
        raise SaekitError(
            f"{directory / CFG_FILE} sets apply_b_dec_to_input for a transcoder, which SAELens "
            f"refuses too; it is not {WHAT}"
        )
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out)}
    expected["b_dec"] = (d_out,)
    if skip:
        expected["W_skip"] = (d_out, d_in)
    if activation == "jumprelu":
        expected["threshold"] = (d_sae,)
    check_tensors(directory / WEIGHTS_FILE, raw, expected, f"a SAELens {architecture}")
    raw = float32(raw)
    tensors = {
        "W_enc": raw["W_enc"].T,
        "b_enc": raw["b_enc"],
        "W_dec": raw["W_dec"].T,
        "b_dec": raw["b_dec"],
        "b_in": raw["b_enc"].new_zeros(d_in),
    }
    if skip:
        tensors["W_skip"] = raw["W_skip"]
    if activation == "jumprelu":
        tensors.update(jumprelu_state(raw["threshold"]))
    return activation, tensors

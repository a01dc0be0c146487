"""Saved dictionaries in other libraries' formats, where they represent it exactly.

- SAELens (`saelens/`): SAEs (see `export.export_saelens`) and single transcoders: `transcoder`,
  `skip_transcoder`, `jumprelu_transcoder`, `jumprelu_skip_transcoder` (cfg.json +
  sae_weights.safetensors; input and output hooks in `metadata.hook_name` / `hook_name_out`,
  weights unfolded: `model_from_pretrained_kwargs` turns TransformerLens' folding off).
- circuit-tracer (`circuit_tracer/`): a per-layer transcoder as `layer_<L>.safetensors` (a set
  of them, one per layer, is assembled by `sae export`), a cross-layer transcoder as a directory
  `W_enc_<i>.safetensors`, `W_dec_<i>.safetensors` and `config.yaml`.

Every format computes a ReLU or a JumpReLU of a linear encoder of the raw input; a dictionary
whose inference is a per-token top-k has no such form and is refused, with the reason. The
input's bias, the per-latent scales of the inference form and the thresholds are folded in.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import Tensor

from saekit.base.atomic import write_safetensors, write_text
from saekit.base.errors import SaekitError
from saekit.base.outputs import TRANSCODER_SET, make_directory, write_marker
from saekit.train.clt import CrossLayerTranscoder
from saekit.train.sae import SAE, Dictionary
from saekit.train.sae_config import SAEConfig
from saekit.train.variants.base import InferenceForm

CIRCUIT_TRACER_CONFIG = "config.yaml"  # JSON, which YAML reads
# SAELens' transcoder architectures: (the activation of the encoder, whether it has W_skip);
# the export writes them and the importer (`importers.saelens`) reads them
SAELENS_TRANSCODERS = {
    "transcoder": ("relu", False),
    "skip_transcoder": ("relu", True),
    "jumprelu_transcoder": ("jumprelu", False),
    "jumprelu_skip_transcoder": ("jumprelu", True),
}
LAYER = re.compile(r"blocks\.(\d+)\.")


class NotExportable(Exception):
    """A format cannot represent a dictionary exactly; the message says why."""


def layer_of(hook: str) -> int | None:
    match = LAYER.match(hook)
    return int(match.group(1)) if match else None


def _raw_encoder(form: InferenceForm, W_enc_FD: Tensor, b_in_D: Tensor) -> tuple[Tensor, Tensor]:
    """(rows, bias) of h = W x + b on the raw input, folding the form's scale and b_in."""
    rows = W_enc_FD if form.row_scale_F is None else form.row_scale_F[:, None] * W_enc_FD
    return rows.detach(), (form.bias_F - rows @ b_in_D).detach()


def _threshold_form(sae: Dictionary, what: str) -> InferenceForm:
    form = sae.activation.inference_form(sae)
    if form.kind == "topk":
        raise NotExportable(
            f"{what} computes ReLU or JumpReLU codes, and a per-token top-k is neither (train a "
            "batchtopk dictionary: its learnt threshold makes it a JumpReLU)"
        )
    return form


# -- SAELens ---------------------------------------------------------------------------------------

# SAELens trains on TransformerLens' unprocessed weights when this is said (its default
# processing would centre the residual stream and fold LayerNorm); saekit's activations are the
# unprocessed model's
UNPROCESSED = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False}


def saelens_metadata(cfg: SAEConfig, hook: str, hook_out: str | None = None) -> dict[str, Any]:
    """The `metadata` of a SAELens cfg.json (6.x layout) for a dictionary reading `hook` (and
    predicting `hook_out`, a transcoder)."""
    identity = cfg.store.get("identity", {})
    metadata = {
        "model_name": identity.get("model"),
        "hook_name": hook,
        "model_from_pretrained_kwargs": dict(UNPROCESSED),
        "prepend_bos": True,
        "context_size": identity.get("context_size"),
        "sae_lens_version": "6.0.0",
        "saekit": {"name": cfg.name, "variant": cfg.variant, "options": cfg.options},
    }
    if hook_out is not None:
        metadata["hook_name_out"] = hook_out
    return metadata


# -- SAELens transcoders -----------------------------------------------------------------------


def saelens_transcoder(sae: SAE, cfg: SAEConfig) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(cfg.json, tensors) of a transcoder in SAELens' layout."""
    shape = sae.shape
    if len(shape.sources) != 1 or len(shape.targets) != 1:
        raise NotExportable("SAELens transcoders read one hook and write one")
    form = _threshold_form(sae, "SAELens")
    rows, bias = _raw_encoder(form, sae.W_enc, sae.b_in)
    tensors = {"W_enc": rows.T, "b_enc": bias, "W_dec": sae.W_dec.T.detach(), "b_dec": sae.b_dec}
    if shape.skip:
        tensors["W_skip"] = sae.W_skip.detach()
    if form.kind == "jumprelu":
        tensors["threshold"] = form.threshold_F
    (architecture,) = (
        name for name, kind in SAELENS_TRANSCODERS.items() if kind == (form.kind, shape.skip)
    )
    saelens_cfg = {
        "architecture": architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "d_out": sae.d_out,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": saelens_metadata(cfg, shape.source_hooks[0], shape.target_hooks[0]),
    }
    return saelens_cfg, {name: t.detach().contiguous() for name, t in tensors.items()}


# -- circuit-tracer -------------------------------------------------------------------------------


def circuit_tracer_transcoder(sae: SAE) -> tuple[int, dict[str, Tensor]]:
    """(layer, tensors of `layer_<layer>.safetensors`) of a per-layer transcoder."""
    shape = sae.shape
    source, target = shape.sources[0], shape.targets[-1]
    layer = layer_of(target.hook)
    if len(shape.sources) != 1 or len(shape.targets) != 1 or shape.reconstructs_its_input:
        raise NotExportable("circuit-tracer's transcoders read one hook and predict another")
    if layer is None or layer_of(source.hook) != layer or source.d != target.d:
        raise NotExportable(
            "circuit-tracer's per-layer transcoders read and write one layer's stream width"
        )
    form = _threshold_form(sae, "circuit-tracer")
    rows, bias = _raw_encoder(form, sae.W_enc, sae.b_in)
    tensors = {"W_enc": rows, "W_dec": sae.W_dec.T, "b_enc": bias, "b_dec": sae.b_dec}
    if form.kind == "jumprelu":  # its JumpReLU has no ReLU: θ < 0 and θ = 0 code the same
        tensors["activation_function.threshold"] = form.threshold_F.clamp_min(0)
    if shape.skip:
        tensors["W_skip"] = sae.W_skip
    return layer, {name: t.detach().contiguous() for name, t in tensors.items()}


def write_circuit_tracer_clt(sae: CrossLayerTranscoder, cfg: SAEConfig, directory: Path) -> None:
    """A cross-layer transcoder in circuit-tracer's layout (source-major decoders, one bias per
    target layer, thresholds clamped at 0)."""
    shape = sae.shape
    assert shape.layers is not None
    if shape.layers[0] != 0:
        raise NotExportable("circuit-tracer's cross-layer transcoders start at layer 0")
    form = _threshold_form(sae, "circuit-tracer")
    d, group, n_layers = sae.d, sae.group, sae.n_layers
    directory.mkdir(parents=True, exist_ok=True)
    for layer in range(n_layers):
        latents = slice(layer * group, (layer + 1) * group)
        layer_form = InferenceForm(
            form.kind,
            form.bias_F[latents],
            None if form.row_scale_F is None else form.row_scale_F[latents],
            None if form.threshold_F is None else form.threshold_F[latents],
        )
        rows, bias = _raw_encoder(
            layer_form, sae.W_enc[layer], sae.b_in[layer * d : (layer + 1) * d]
        )
        encoder = {
            f"W_enc_{layer}": rows,
            f"b_enc_{layer}": bias,
            f"b_dec_{layer}": sae.b_dec[layer * d : (layer + 1) * d].detach(),
        }
        if layer_form.threshold_F is not None:
            encoder[f"threshold_{layer}"] = layer_form.threshold_F.clamp_min(0)
        decoder = sae.W_dec[layer].detach().T.reshape(group, n_layers - layer, d)
        write_safetensors(directory / f"W_enc_{layer}.safetensors", _contiguous(encoder))
        write_safetensors(
            directory / f"W_dec_{layer}.safetensors", {f"W_dec_{layer}": decoder.contiguous()}
        )
    options = cfg.options
    config = {
        "model_kind": "cross_layer_transcoder",
        "model_name": cfg.store.get("identity", {}).get("model"),
        "feature_input_hook": options.get("reads", "hook_resid_mid"),
        "feature_output_hook": options.get("writes", "hook_mlp_out"),
        "scan": cfg.name,
    }
    write_text(directory / CIRCUIT_TRACER_CONFIG, json.dumps(config, indent=2) + "\n")


def transcoder_set_config(
    model_name: str | None, input_hook: str, output_hook: str, scan: str, layers: list[int]
) -> str:
    """config.yaml of a set of per-layer transcoders (`layer_<i>.safetensors` beside it)."""
    config = {
        "model_kind": "transcoder_set",
        "model_name": model_name,
        "feature_input_hook": input_hook,
        "feature_output_hook": output_hook,
        "scan": scan,
        "transcoders": [f"layer_{layer}.safetensors" for layer in layers],
    }
    return json.dumps(config, indent=2) + "\n"


def _contiguous(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: t.contiguous() for name, t in tensors.items()}


def export_transcoder_set(sae_dirs: list[Path], out: Path) -> Path:
    """Assemble saved per-layer transcoders into a circuit-tracer transcoder set in `out`
    (`config.yaml` and `layer_<i>.safetensors` for every layer 0 .. max, all of one width and
    the same hooks relative to their layer); refused in one line otherwise. Returns config.yaml.
    """
    by_layer: dict[int, tuple[Path, SAEConfig]] = {}
    for sae_dir in sae_dirs:
        cfg = SAEConfig.read(sae_dir / "cfg.json")
        exports = (
            json.loads((sae_dir / "exports.json").read_text())
            if (sae_dir / "exports.json").is_file()
            else {}
        )
        written = exports.get("circuit_tracer", "not exported: saved before exports.json")
        if not written.endswith(".safetensors"):
            raise SaekitError(f"{sae_dir} is no circuit-tracer per-layer transcoder ({written})")
        layer = layer_of(cfg.targets[0])
        if layer in by_layer:
            raise SaekitError(
                f"two transcoders write layer {layer}: {by_layer[layer][0]} and {sae_dir}"
            )
        by_layer[layer] = (sae_dir / written, cfg)
    missing = sorted(set(range(max(by_layer) + 1)) - set(by_layer))
    if missing:
        raise SaekitError(
            f"circuit-tracer needs a transcoder for every layer from 0; layers {missing} have none"
        )
    hooks = {_relative_hooks(cfg) for _, cfg in by_layer.values()}
    widths = {cfg.d_sae for _, cfg in by_layer.values()}
    if len(hooks) > 1 or len(widths) > 1:
        raise SaekitError(
            "the transcoders of a set must read and write the same hooks of their layers and "
            "have one number of latents"
        )
    ((input_hook, output_hook),) = hooks
    first = by_layer[0][1]
    make_directory(out, out)
    write_marker(out, TRANSCODER_SET)
    for layer, (path, _) in sorted(by_layer.items()):
        write_safetensors(out / f"layer_{layer}.safetensors", load_file(path))
    config = transcoder_set_config(
        first.store.get("identity", {}).get("model"),
        input_hook,
        output_hook,
        first.name,
        sorted(by_layer),
    )
    write_text(out / CIRCUIT_TRACER_CONFIG, config)
    return out / CIRCUIT_TRACER_CONFIG


def is_transcoder_set(directory: Path) -> bool:
    """Whether `directory` holds a transcoder set `export_transcoder_set` wrote."""
    try:
        config = json.loads((directory / CIRCUIT_TRACER_CONFIG).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_kind") == "transcoder_set"


def _relative_hooks(cfg: SAEConfig) -> tuple[str, str]:
    """The input and output hooks relative to their block (`mlp.hook_in`, `hook_mlp_out`)."""
    return tuple(LAYER.sub("", hook, count=1) for hook in (cfg.sources[0], cfg.targets[0]))

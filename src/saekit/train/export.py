"""Saved dictionaries: `RUN/saes/<name>/` with the input scaling folded in, plus exports.

    saes/<name>/sae.safetensors     the dictionary's state dict (raw-activation space)
    saes/<name>/cfg.json            `SAEConfig`: variant, hooks, shapes, options, store, training
    saes/<name>/saelens/            SAELens' layout: cfg.json + sae_weights.safetensors
    saes/<name>/circuit_tracer/     circuit-tracer's layout (transcoders, CLTs; see formats.py)
    saes/<name>/exports.json        each format: written, or why it cannot represent it

`load_sae(directory)` is the entry point for evaluation; it also takes the URL of a published
SAE (`sae publish`), fetched and checked against its manifest (`saekit.base.published`), and
reads other libraries' saved SAE folders (`importers`).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from saekit.base.atomic import write_json, write_safetensors
from saekit.base.errors import SaekitError
from saekit.base.locations import is_local
from saekit.base.outputs import make_directory
from saekit.base.published import INTENT, MANIFEST, fetch
from saekit.train import formats, importers
from saekit.train.clt import CrossLayerTranscoder
from saekit.train.sae import SAE, Dictionary
from saekit.train.sae_config import DAMAGED, SAE_FORMAT, SAEConfig
from saekit.train.spec import ResolvedSpec, make_spec

WEIGHTS_FILE = "sae.safetensors"
CFG_FILE = "cfg.json"
SAELENS_DIR = "saelens"
SAELENS_WEIGHTS_FILE = "sae_weights.safetensors"
CIRCUIT_TRACER_DIR = "circuit_tracer"
EXPORTS_FILE = "exports.json"


def save_sae(trained: Dictionary, directory: Path, cfg: SAEConfig) -> None:
    """Write a dictionary trained on scaled activations (each hook times its scale) so that it
    takes and gives raw activations."""
    sae = copy.deepcopy(trained).cpu()
    shape = sae.shape
    sae.fold_scales_(
        [cfg.scale_of(h) for h in shape.source_hooks], [cfg.scale_of(h) for h in shape.target_hooks]
    )
    make_directory(directory, directory.parent.parent)  # RUN/saes/NAME, never through a link
    write_safetensors(directory / WEIGHTS_FILE, sae.state_for_saving(), {"format": SAE_FORMAT})
    write_json(directory / CFG_FILE, dataclasses.asdict(cfg))
    write_json(directory / EXPORTS_FILE, write_exports(sae, directory, cfg))


def write_exports(sae: Dictionary, directory: Path, cfg: SAEConfig) -> dict[str, str]:
    """Write the SAELens and circuit-tracer exports that represent the dictionary exactly;
    return, per format, where it is or why it is not."""
    exports = {}
    for name, export in (("saelens", _saelens), ("circuit_tracer", _circuit_tracer)):
        try:
            exports[name] = export(sae, directory, cfg)
        except formats.NotExportable as refusal:
            exports[name] = f"not exported: {refusal}"
    return exports


def _saelens(sae: Dictionary, directory: Path, cfg: SAEConfig) -> str:
    shape = sae.shape
    if shape.cross_layer or len(shape.sources) > 1 or len(shape.targets) > 1:
        raise formats.NotExportable("SAELens has no format for dictionaries of several hooks")
    assert isinstance(sae, SAE)
    if shape.reconstructs_its_input:
        export_saelens(sae, directory / SAELENS_DIR, cfg)
    else:
        saelens_cfg, tensors = formats.saelens_transcoder(sae, cfg)
        (directory / SAELENS_DIR).mkdir(parents=True, exist_ok=True)
        write_safetensors(directory / SAELENS_DIR / SAELENS_WEIGHTS_FILE, tensors)
        write_json(directory / SAELENS_DIR / CFG_FILE, saelens_cfg)
    return SAELENS_DIR


def _circuit_tracer(sae: Dictionary, directory: Path, cfg: SAEConfig) -> str:
    out = directory / CIRCUIT_TRACER_DIR
    if isinstance(sae, CrossLayerTranscoder):
        formats.write_circuit_tracer_clt(sae, cfg, out)
        return CIRCUIT_TRACER_DIR
    if sae.shape.reconstructs_its_input:
        raise formats.NotExportable("circuit-tracer reads transcoders, not SAEs or crosscoders")
    assert isinstance(sae, SAE)
    layer, tensors = formats.circuit_tracer_transcoder(sae)
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors(out / f"layer_{layer}.safetensors", tensors)
    return f"{CIRCUIT_TRACER_DIR}/layer_{layer}.safetensors"


def export_saelens(sae: SAE, directory: Path, cfg: SAEConfig) -> None:
    """SAELens' layout: W_enc [d_in, d_sae], W_dec [d_sae, d_in], variant-specific extras.

    Variants SAELens lacks map onto what computes the same at inference: BatchTopK and Feature
    Choice as JumpReLU with their learnt thresholds, g-SAE as TopK (plain mode).
    """
    activation = sae.activation
    make_directory(directory, directory.parent)
    metadata = formats.saelens_metadata(cfg, cfg.hook)
    widths = getattr(activation.options, "widths", None)
    if widths is not None:  # a Matryoshka SAE: SAELens keeps unknown metadata as it is
        metadata["matryoshka_widths"] = list(widths)
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


def local_sae(location: str | Path, storage_options: dict | None = None) -> Path:
    """The local directory of a saved SAE: a directory as it is, or a published SAE's URL
    fetched (its cfg.json and weights, checked against the manifest). A local folder whose
    publish is under way or was cut short is refused."""
    if not is_local(str(location)):
        return fetch(str(location), (CFG_FILE, WEIGHTS_FILE), storage_options)
    directory = Path(location)
    if (directory / INTENT).exists() and not (directory / MANIFEST).exists():
        raise SaekitError(
            f"{directory} is being published, or its publish was cut short; publish it again "
            "(sae publish ... --replace) before reading it"
        )
    return directory


def load_sae(
    directory: str | Path, device: str | torch.device = "cpu", storage_options: dict | None = None
) -> Dictionary:
    """Load a saved SAE (raw-activation space, eval mode); its `SAEConfig` is `sae.cfg`.
    `directory` may be a published SAE's URL (`storage_options` for its fsspec filesystem).

    A damaged or inconsistent SAE (cfg.json that disagrees with the weights, a weights file that
    is not safetensors) is refused in one line, before memory is allocated for it. A folder
    saved by another library (SAELens, sparsify, dictionary_learning) is imported on the fly
    (`saekit.train.importers`), with the hooks its library names."""
    directory = local_sae(directory, storage_options)
    if importers.foreign_library(directory) is not None:
        return importers.load_foreign(directory).to(device).eval()
    cfg = SAEConfig.read(directory / CFG_FILE)
    spec = saved_spec(cfg, directory / CFG_FILE)
    shape = cfg.dictionary_shape()
    with torch.device("meta"):  # the shapes the cfg implies, without allocating anything
        planned = spec.build(shape)
        expected = {key: tuple(t.shape) for key, t in planned.state_dict().items()}
    later = tuple(f"activation.{module}." for module in planned.activation.later_state)
    optional = {key for key in expected if key.startswith(later)}
    check_weights(directory / WEIGHTS_FILE, expected, optional)
    sae = spec.build(shape)
    tensors = load_file(directory / WEIGHTS_FILE)
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SaekitError(f"{directory / WEIGHTS_FILE} holds NaN or Inf in {key}; {DAMAGED}")
    sae.load_state_dict(tensors, strict=False)  # checked above
    sae.cfg = cfg
    return sae.to(device).eval()


def saved_spec(cfg: SAEConfig, where: Path) -> ResolvedSpec:
    """The spec a saved SAE was built from, its options checked like a `--sae` spec's."""
    given = {key: value for key, value in cfg.options.items() if value is not None}
    spec = make_spec(cfg.variant, given, str(where))
    k = getattr(spec.options, "k", 1)
    groups = len(cfg.dictionary_shape().layers or (None,))
    if spec.options.latents * groups != cfg.d_sae or k > cfg.d_sae:
        raise SaekitError(
            f"{where}: options (latents={spec.options.latents}, k={k}) disagree with "
            f"d_sae={cfg.d_sae}; {DAMAGED}"
        )
    return ResolvedSpec(cfg.name, spec.variant, spec.options)


def check_weights(
    path: Path, expected: dict[str, tuple[int, ...]], optional: set[str] = frozenset()
) -> None:
    """Refuse a weights file that is not safetensors or whose tensors disagree with `expected`
    (names and shapes; the `optional` ones may be absent: state an earlier saekit did not save),
    reading only its header."""
    try:
        with safe_open(path, "pt") as weights:
            found = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}  # noqa: SIM118
    except FileNotFoundError:
        raise SaekitError(f"{path.parent} has no {path.name}; {DAMAGED}") from None
    except Exception as error:  # safetensors raises its own error types for broken files
        raise SaekitError(f"{path} is not a safetensors file ({error}); {DAMAGED}") from None
    for key in sorted(set(expected) | set(found)):
        if expected.get(key) != found.get(key) and not (key in optional and key not in found):
            raise SaekitError(
                f"{path} holds {key} of shape {_shape(found.get(key))} but its cfg.json means "
                f"{_shape(expected.get(key))}; {DAMAGED}"
            )


def _shape(shape: tuple[int, ...] | None) -> str:
    return "none (missing)" if shape is None else str(list(shape))

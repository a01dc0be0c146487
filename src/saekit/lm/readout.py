"""The LM's readout: what a direction of the residual stream does to the next-token logits,
read through the final norm and the unembedding.

`direction_logits` reads them from a loaded model (steering). `load_readout` reads them alone,
without loading the model (latent dashboards): the architecture is instantiated on the `meta`
device (no memory), the unembedding is `get_output_embeddings()` (Hugging Face's API), the final
norm is the last normalisation module of the base model outside its list of blocks, and their
tensors alone are read from the checkpoint (`safetensors`, sharded or not, or a PyTorch `.bin`;
a tied unembedding is read from the input embedding). For a direction d:

    effect(d) = W_U (N(s·d) − N(0)),   s = √D / ‖d‖,

N the final norm with its own convention (LayerNorm, RMSNorm, Gemma's 1 + w, ...): the change of
the logits when the normalised residual stream is the latent's direction alone. The unembedding's
bias and the norm's bias cancel; the ranking of tokens is that of the logit lens with the final
norm folded in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from saekit.base.errors import SaekitError

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
CHUNK_LATENTS = 256


@dataclass
class Readout:
    """The final norm and the unembedding of an LM, on their own."""

    norm: nn.Module
    W_U_VD: Tensor

    @property
    def d_model(self) -> int:
        return self.W_U_VD.shape[1]

    @torch.no_grad()
    def logit_effects(self, directions_LD: Tensor) -> Tensor:
        """[L, V] logit effects of L directions of the residual stream (see the module doc)."""
        norms_L1 = directions_LD.norm(dim=1, keepdim=True).clamp_min(1e-30)
        scaled_LD = directions_LD * (self.d_model**0.5 / norms_L1)
        zero_1D = directions_LD.new_zeros(1, self.d_model)
        return (self.norm(scaled_LD) - self.norm(zero_1D)) @ self.W_U_VD.T


@torch.no_grad()
def top_logit_effects(
    readout: Readout, W_dec_DF: Tensor, latents_S: Tensor, k: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(top token ids, their effects, bottom ids, their effects), each [S, k], per latent."""
    k = min(k, readout.W_U_VD.shape[0])
    parts: list[tuple[Tensor, ...]] = []
    for first in range(0, len(latents_S), CHUNK_LATENTS):
        chosen = latents_S[first : first + CHUNK_LATENTS].to(W_dec_DF.device)
        effects_LV = readout.logit_effects(W_dec_DF[:, chosen].T.float())
        top, bottom = effects_LV.topk(k, dim=1), effects_LV.topk(k, dim=1, largest=False)
        parts.append((top.indices, top.values, bottom.indices, bottom.values))
    if not parts:
        empty = torch.zeros(0, k)
        return empty.long(), empty, empty.long(), empty
    return tuple(torch.cat([part[i] for part in parts]).cpu() for i in range(4))  # type: ignore[return-value]


def load_readout(model: str, device: torch.device) -> Readout | None:
    """The final norm and unembedding of `model` (hub name or local directory); None when the
    model has no output embedding or no recognisable final norm."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        config = AutoConfig.from_pretrained(model)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except Exception as error:  # HF raises OSError, ValueError, ... for a bad model
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SaekitError(f"cannot read the architecture of model {model}: {reason}") from None
    names = {module: name for name, module in skeleton.named_modules()}
    unembed = skeleton.get_output_embeddings()
    norm_name = _final_norm_name(skeleton)
    if unembed is None or norm_name is None:
        return None
    norm = skeleton.get_submodule(norm_name)
    wanted = {f"{norm_name}.{key}": key for key in norm.state_dict()}
    unembed_key = f"{names[unembed]}.weight"
    embed_key = f"{names[skeleton.get_input_embeddings()]}.weight"
    tied = bool(getattr(config, "tie_word_embeddings", False))
    tensors = _read_checkpoint(
        model, [*wanted, unembed_key], skeleton.base_model_prefix, {unembed_key: embed_key}
        if tied else {}
    )  # fmt: skip
    norm.to_empty(device=device)
    norm.load_state_dict({key: tensors[full].float() for full, key in wanted.items()})
    norm.float().eval()
    return Readout(norm, tensors[unembed_key].float().to(device))


def _final_norm_name(model: nn.Module) -> str | None:
    """The last normalisation module of the base model that is not inside a block list."""
    base_prefix = model.base_model_prefix
    found = None
    for name, module in model.named_modules():
        parts = name.split(".")
        inside_base = not base_prefix or parts[0] == base_prefix
        in_blocks = any(part.isdigit() for part in parts)
        if inside_base and not in_blocks and "norm" in type(module).__name__.lower():
            found = name
    return found


def _read_checkpoint(
    model: str, keys: list[str], base_prefix: str, fallbacks: dict[str, str]
) -> dict[str, Tensor]:
    """The named tensors of a checkpoint, reading (or, for a hub model, fetching) only the files
    or shards that hold them. A key may be stored without the base model's prefix (older
    checkpoints), and a missing key may be read under its fallback (a tied unembedding under the
    input embedding)."""
    from transformers.utils import cached_file

    def locate(filename: str) -> str | None:
        try:
            return cached_file(model, filename, _raise_exceptions_for_missing_entries=False)
        except OSError:
            return None

    files: dict[str, str] = {}  # checkpoint key -> file name (a shard, or the single file)
    for index_name in INDEX_FILES:
        index = locate(index_name)
        if index:
            files = json.loads(Path(index).read_text())["weight_map"]
            break
    else:
        for single in SINGLE_FILES:
            path = locate(single)
            if path:
                files = dict.fromkeys(_checkpoint_keys(path), single)
                break
    result = {}
    for key in keys:
        candidates = [key, fallbacks.get(key)]
        stored = [
            variant
            for candidate in candidates
            if candidate
            for variant in (candidate, candidate.removeprefix(f"{base_prefix}."))
            if variant in files
        ]
        path = locate(files[stored[0]]) if stored else None
        if path is None:
            raise SaekitError(
                f"model {model} has no checkpoint tensor {key}; give a complete model "
                "directory with --model"
            )
        result[key] = _load_tensor(path, stored[0])
    return result


def _checkpoint_keys(path: str) -> list[str]:
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, "pt") as file:
            return list(file.keys())
    return list(torch.load(path, map_location="cpu", mmap=True, weights_only=True))


def _load_tensor(path: str, key: str) -> Tensor:
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, "pt") as file:
            return file.get_tensor(key)
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)[key]


def direction_logits(bridge: object, directions_LD: Tensor) -> Tensor:
    """How each direction moves the logits of a loaded model through its final norm and
    unembedding, as the LM applies them (the norm's centring and weight, then `W_U`; its division
    by the token's scale is a positive factor that keeps the ranking): [L, V]."""
    directions_LD = directions_LD.float()
    if getattr(bridge.cfg, "normalization_type", None) in ("LN", "LNPre"):
        directions_LD = directions_LD - directions_LD.mean(dim=1, keepdim=True)
    weight = getattr(bridge.ln_final, "weight", None)
    if weight is not None:
        directions_LD = directions_LD * weight.float()
    return directions_LD @ bridge.W_U.float()


def reads_residual_stream(bridge: object, d: int) -> bool:
    """Whether vectors of width `d` live in the model's residual stream (the unembedding reads
    them), so that their logit effects are defined."""
    return bridge.W_U.shape[0] == d

"""Storage encodings of activations and gradients (torch in, numpy out, and back).

Activations are kept as float16, float32, or bfloat16 bits in a uint16 array (zarr has no
bfloat16 dtype). Gradients of an LM loss are tiny (median ~1e-4) and about half their elements
sit below float16's normal range, so float16 gradients are multiplied per row by a power of two
that puts the row's largest magnitude in [2^14, 2^15) and the factor is stored beside them:
`gradient = stored / gradient_scale`. The scaling is exact (a power of two), cannot overflow and
keeps every row at full float16 precision.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from saekit.errors import SaekitError

FLOAT16_MAX = 65504.0
_TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Largest |g| of a row is scaled into [2**_SCALED_EXPONENT, 2**(_SCALED_EXPONENT + 1)).
_SCALED_EXPONENT = 14


def _check_finite(x_RD: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(x_RD).all()):
        bad = (~torch.isfinite(x_RD)).any(dim=-1).nonzero().flatten()[:5].tolist()
        raise SaekitError(
            f"{what} contain NaN or Inf (rows {bad} of the block); nothing was written"
        )


def encode_activations(x_RD: torch.Tensor, logical_dtype: str) -> torch.Tensor:
    """Activations of any float dtype -> the storage dtype, on the same device.

    bfloat16 comes back as int16 holding the bfloat16 bits (`as_numpy` makes them uint16).
    """
    _check_finite(x_RD, "activations")
    if logical_dtype == "float16" and float(x_RD.abs().max()) > FLOAT16_MAX:
        raise SaekitError(
            "activations exceed the float16 range (65504); harvest into a new store with "
            "--dtype bfloat16 or --dtype float32"
        )
    converted = x_RD.detach().to(_TORCH_DTYPES[logical_dtype])
    return converted.view(torch.int16) if logical_dtype == "bfloat16" else converted


def decode_activations(raw_RD: torch.Tensor, logical_dtype: str) -> torch.Tensor:
    """Stored activations (as a torch tensor of the storage dtype) -> float32."""
    if logical_dtype == "bfloat16":
        return raw_RD.view(torch.bfloat16).float()
    return raw_RD.float()


def as_torch(array: np.ndarray) -> torch.Tensor:
    """Wrap a numpy array without copying; uint16 (bfloat16 bits) becomes int16 of the same bits."""
    if array.dtype == np.uint16:
        array = array.view(np.int16)
    return torch.from_numpy(array)


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """The inverse of `as_torch`: a CPU numpy array, int16 (bfloat16 bits) viewed as uint16."""
    array = tensor.detach().cpu().numpy()
    return array.view(np.uint16) if array.dtype == np.int16 else array


def encode_gradients(g_RD: torch.Tensor, encoding: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients -> (stored values, per-row scale or None for float32), on the same device."""
    _check_finite(g_RD, "gradients")
    g_RD = g_RD.detach().float()
    if encoding == "float32":
        return g_RD, None
    amax_R = g_RD.abs().amax(dim=-1)
    _, exponent_R = torch.frexp(amax_R)  # amax = mantissa * 2**exponent, mantissa in [0.5, 1)
    shift_R = torch.where(amax_R > 0, _SCALED_EXPONENT + 1 - exponent_R, 0).clamp(-126, 126)
    scale_R = torch.ldexp(torch.ones_like(amax_R), shift_R)
    return (g_RD * scale_R[:, None]).to(torch.float16), scale_R


def decode_gradients(values_RD: torch.Tensor, scale_R: torch.Tensor | None) -> torch.Tensor:
    """Stored gradients (and their per-row scale) -> float32."""
    if scale_R is None:
        return values_RD.float()
    return values_RD.float() / scale_R[:, None]


def nonfinite_bits(logical_dtype: str) -> tuple[np.dtype, int]:
    """(unsigned dtype of the same width, bit mask): a stored value of `logical_dtype` is NaN or
    Inf exactly when every bit of the mask is set. Derived from the dtype: the exponent bits of
    IEEE formats; every bit but the sign for formats without infinities (torch's `...fn`)."""
    dtype = _TORCH_DTYPES[logical_dtype]
    info = torch.finfo(dtype)
    mantissa_bits = -round(math.log2(info.eps))
    if str(dtype).endswith("fn"):
        mask = (1 << (info.bits - 1)) - 1
    else:
        mask = ((1 << (info.bits - 1 - mantissa_bits)) - 1) << mantissa_bits
    return np.dtype(f"uint{info.bits}"), mask

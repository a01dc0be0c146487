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


# What is wrong with a row, as bit flags of a uint8 (0: nothing). Computed on the rows' device
# without reading anything back, so a harvest checks a whole block at once (`raise_for_problems`).
NONFINITE_ACTIVATIONS, NONFINITE_GRADIENTS, FLOAT16_OVERFLOW = 1, 2, 4
_PROBLEMS = (
    (NONFINITE_ACTIVATIONS, "activations contain NaN or Inf"),
    (FLOAT16_OVERFLOW, "activations exceed the float16 range (65504)"),
    (NONFINITE_GRADIENTS, "gradients contain NaN or Inf"),
)


def activation_problems(x_RD: torch.Tensor, logical_dtype: str) -> torch.Tensor:
    """Per-row flags: NONFINITE_ACTIVATIONS, and FLOAT16_OVERFLOW for a float16 store."""
    flags_R = (~torch.isfinite(x_RD).all(dim=-1)).to(torch.uint8) * NONFINITE_ACTIVATIONS
    if logical_dtype == "float16":
        flags_R |= (x_RD.abs().amax(dim=-1) > FLOAT16_MAX).to(torch.uint8) * FLOAT16_OVERFLOW
    return flags_R


def gradient_problems(g_RD: torch.Tensor) -> torch.Tensor:
    """Per-row flags: NONFINITE_GRADIENTS."""
    return (~torch.isfinite(g_RD).all(dim=-1)).to(torch.uint8) * NONFINITE_GRADIENTS


def raise_for_problems(flags_R: torch.Tensor) -> None:
    """One line for the first kind of problem any row has (reads the flags on the host)."""
    if not bool(flags_R.any()):
        return
    for flag, what in _PROBLEMS:
        rows = ((flags_R & flag) != 0).nonzero().flatten()
        if len(rows) and flag == FLOAT16_OVERFLOW:
            raise SaekitError(
                f"{what}; harvest into a new store with --dtype bfloat16 or --dtype float32"
            )
        if len(rows):
            raise SaekitError(
                f"{what} (rows {rows[:5].tolist()} of the block); nothing was written"
            )


def encode_activations(x_RD: torch.Tensor, logical_dtype: str, check: bool = True) -> torch.Tensor:
    """Activations of any float dtype -> the storage dtype, on the same device.

    bfloat16 comes back as int16 holding the bfloat16 bits (`as_numpy` makes them uint16).
    `check=False` leaves the checks (`activation_problems`) to the caller.
    """
    if check:
        raise_for_problems(activation_problems(x_RD, logical_dtype))
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


def encode_gradients(
    g_RD: torch.Tensor, encoding: str, check: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients -> (stored values, per-row scale or None for float32), on the same device.
    `check=False` leaves the check (`gradient_problems`) to the caller."""
    if check:
        raise_for_problems(gradient_problems(g_RD))
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

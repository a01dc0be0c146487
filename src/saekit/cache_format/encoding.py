"""Storage encodings of activations and gradients (torch in, numpy out, and back).

Activations are kept as float16, float32, bfloat16 bits in a uint16 array, or float8 (e4m3)
bits in a uint8 array scaled per row (zarr has no bfloat16 or float8 dtype). Gradients of an LM
loss are tiny (median ~1e-4) and about half their elements sit below float16's normal range, so
float16 gradients are multiplied per row by a power of two that puts the row's largest magnitude
in [2^14, 2^15) and the factor is stored beside them: `gradient = stored / gradient_scale`. The
scaling is exact (a power of two), cannot overflow and keeps every row at full float16
precision. float8 rows (activations and gradients alike) are scaled the same way into
[2^7, 2^8), the highest binade e4m3 holds whole (its largest value is 448).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from saekit.base.errors import SaekitError
from saekit.cache_format import schema
from saekit.cache_format.schema import FloatEncoding, StoreSpec

FLOAT16_MAX = 65504.0
TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float8_e4m3fn": torch.float8_e4m3fn,
}
# The largest |value| of a scaled row lands in [2**exponent, 2**(exponent + 1)).
SCALED_EXPONENTS = {"float16": 14, "float8_e4m3fn": 7}
# Torch has no uint16 arithmetic worth the name: the bits of bfloat16 travel as int16.
_BITS_DTYPES = {torch.bfloat16: torch.int16, torch.float8_e4m3fn: torch.uint8}
# The float32 value of every float8_e4m3fn bit pattern: on the CPU a table lookup widens float8
# ~3x faster than torch's conversion, to the same (exact) values.
_FLOAT8_VALUES = torch.arange(256).to(torch.uint8).view(torch.float8_e4m3fn).float().numpy()


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
                f"{what}; harvest into a new store with --dtype bfloat16, float8 or float32"
            )
        if len(rows):
            raise SaekitError(
                f"{what} (rows {rows[:5].tolist()} of the block); nothing was written"
            )


def row_scale(x_RD: torch.Tensor, exponent: int) -> torch.Tensor:
    """The power of two per row that puts the row's largest |value| in [2**e, 2**(e+1)); 1 for
    a zero row. float32, on the rows' device."""
    amax_R = x_RD.abs().amax(dim=-1).float()
    _, exponent_R = torch.frexp(amax_R)  # amax = mantissa * 2**exponent, mantissa in [0.5, 1)
    shift_R = torch.where(amax_R > 0, exponent + 1 - exponent_R, 0).clamp(-126, 126)
    return torch.ldexp(torch.ones_like(amax_R), shift_R)


def encode_values(
    x_RD: torch.Tensor, encoding: FloatEncoding
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Float rows -> (stored values, per-row scale or None), on the same device.

    Values whose storage dtype is raw bits (bfloat16, float8) come back as int16 / uint8 tensors
    of those bits (`as_numpy` makes int16 uint16).
    """
    x_RD = x_RD.detach()
    element = TORCH_DTYPES[encoding.element]
    scale_R = None
    if encoding.scaled:
        scale_R = row_scale(x_RD, SCALED_EXPONENTS[encoding.element])
        x_RD = x_RD.float() * scale_R[:, None]
    values = x_RD.to(element)
    return values.view(_BITS_DTYPES.get(element, element)), scale_R


def encode_activations(
    x_RD: torch.Tensor, logical_dtype: str, check: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Activations of any float dtype -> (stored values, per-row scale or None), on the same
    device. `logical_dtype` is the store's activation dtype. `check=False` leaves the checks
    (`activation_problems`) to the caller."""
    if check:
        raise_for_problems(activation_problems(x_RD, logical_dtype))
    encoding = schema.FLOAT_ENCODINGS[schema.ACTIVATION_ENCODINGS[logical_dtype]]
    return encode_values(x_RD, encoding)


def encode_gradients(
    g_RD: torch.Tensor, encoding: str, check: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients -> (stored values, per-row scale or None for float32), on the same device.
    `check=False` leaves the check (`gradient_problems`) to the caller."""
    if check:
        raise_for_problems(gradient_problems(g_RD))
    return encode_values(g_RD.float(), schema.FLOAT_ENCODINGS[encoding])


def decode_values(
    stored_RD: torch.Tensor, encoding: FloatEncoding, scale_R: torch.Tensor | None = None
) -> torch.Tensor:
    """Stored values (any tensor holding the storage dtype's bits) -> a new contiguous float32
    tensor on the same device. Exact: the element type widens to float32 and the scale is a
    power of two, so every device decodes the same bits to the same floats."""
    element = TORCH_DTYPES[encoding.element]
    if element == torch.float8_e4m3fn and stored_RD.device.type == "cpu":
        decoded_RD = torch.from_numpy(np.take(_FLOAT8_VALUES, stored_RD.view(torch.uint8).numpy()))
    else:
        decoded_RD = stored_RD.view(element).to(
            torch.float32, memory_format=torch.contiguous_format, copy=True
        )
    if encoding.scaled:
        return decoded_RD.div_(scale_R.contiguous()[:, None])  # strided broadcasts are slow
    return decoded_RD


def decode_fields(raw: Mapping[str, torch.Tensor], spec: StoreSpec) -> dict[str, torch.Tensor]:
    """Raw fields of rows (storage dtypes, scales included) -> float32 activations and gradients
    (descaled, new tensors), other fields as they are, scales dropped."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in raw.items():
        base, _ = schema.split_field(name)
        if base in schema.SCALE_ARRAYS:
            scale_R = raw.get(schema.scale_field(name))
            out[name] = decode_values(tensor, spec.encoding(base), scale_R)
        elif base not in schema.SCALE_ARRAYS.values():
            out[name] = tensor
    return out


def as_torch(array: np.ndarray) -> torch.Tensor:
    """Wrap a numpy array without copying; uint16 (bfloat16 bits) becomes int16 of the same bits."""
    if array.dtype == np.uint16:
        array = array.view(np.int16)
    return torch.from_numpy(array)


def torch_dtype(storage_dtype: np.dtype) -> torch.dtype:
    """The torch dtype `as_torch` gives an array of `storage_dtype`."""
    return as_torch(np.empty(0, storage_dtype)).dtype


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """The inverse of `as_torch`: a CPU numpy array, int16 (bfloat16 bits) viewed as uint16."""
    array = tensor.detach().cpu().numpy()
    return array.view(np.uint16) if array.dtype == np.int16 else array


def nonfinite_threshold(element: str) -> tuple[np.dtype, int]:
    """(unsigned dtype of the same width, threshold): a stored value of the element type (an
    encoding's `element`, e.g. `float8_e4m3fn`) is NaN or Inf exactly when its bits without the
    sign are at least the threshold. Derived from the dtype: every exponent bit set for IEEE
    formats; every bit but the sign for formats without infinities (torch's `...fn`)."""
    dtype = TORCH_DTYPES[element]
    info = torch.finfo(dtype)
    mantissa_bits = -round(math.log2(info.eps))
    if str(dtype).endswith("fn"):
        threshold = (1 << (info.bits - 1)) - 1
    else:
        threshold = ((1 << (info.bits - 1 - mantissa_bits)) - 1) << mantissa_bits
    return np.dtype(f"uint{info.bits}"), threshold

"""Storage encodings: activation dtypes round-trip, gradients keep ≤1e-3 relative error, float8
keeps every row finite, adds no zeros within its range and bounds the relative error."""

import numpy as np
import pytest
import torch

from saekit.base.errors import SaekitError
from saekit.cache_format import encoding
from saekit.cache_format.nonfinite import finite_rows
from saekit.cache_format.schema import FLOAT_ENCODINGS


def gpt2_like_gradients(n: int = 4096, d: int = 768, seed: int = 0) -> torch.Tensor:
    """Student-t elements with a per-token lognormal scale around 1e-4, like GPT-2's gradients."""
    rng = np.random.default_rng(seed)
    g = rng.standard_t(3, (n, d)) * rng.lognormal(np.log(1e-4), 1.5, (n, 1))
    return torch.from_numpy(g.astype(np.float32))


def decode(values: torch.Tensor, scale: torch.Tensor | None, name: str) -> torch.Tensor:
    return encoding.decode_values(values, FLOAT_ENCODINGS[name], scale)


def per_token_relative_error(g: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    g, decoded = g.double(), decoded.double()  # float32 norms of 1e-25-sized rows underflow
    return (decoded - g).norm(dim=1) / g.norm(dim=1)


def test_gradients_keep_per_token_relative_error_below_1e3():
    g = gpt2_like_gradients()
    values, scale = encoding.encode_gradients(g, "scaled-float16")
    assert values.dtype == torch.float16 and scale.dtype == torch.float32
    decoded = decode(values, scale, "scaled-float16")
    error = per_token_relative_error(g, decoded)
    assert error.max() <= 1e-3
    assert error.median() <= 3e-4
    assert not bool(((g != 0) & (decoded == 0)).any()), "no zeros may be introduced"
    assert bool(torch.isfinite(decoded).all()), "no infinities may be introduced"


def test_plain_float16_would_fail_the_same_criterion():
    """The per-row scale matters: plain float16 flushes small gradients to zero."""
    g = gpt2_like_gradients()
    plain = g.half().float()
    assert bool(((g != 0) & (plain == 0)).any())
    assert per_token_relative_error(g, plain).max() > 1e-3


def test_gradient_scale_is_a_power_of_two_and_extremes_stay_finite():
    g = gpt2_like_gradients(n=6, d=32)
    g[0] *= 1e9  # far above float16's range
    g[1] *= 1e-25  # far below it
    g[2] = 0.0  # the last position of a sequence
    values, scale = encoding.encode_gradients(g, "scaled-float16")
    mantissa, _ = torch.frexp(scale)
    assert bool((mantissa == 0.5).all())
    assert bool(torch.isfinite(values).all())
    assert values.abs().max() < 2**15
    decoded = decode(values, scale, "scaled-float16")
    assert torch.equal(decoded[2], torch.zeros(32))
    nonzero = [0, 1, 3, 4, 5]
    assert per_token_relative_error(g[nonzero], decoded[nonzero]).max() <= 1e-3


def test_float32_gradients_are_exact():
    g = gpt2_like_gradients(n=8, d=16)
    values, scale = encoding.encode_gradients(g, "float32")
    assert scale is None
    assert torch.equal(decode(values, None, "float32"), g)


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [("float16", 1e-3), ("bfloat16", 8e-3), ("float32", 0.0)]
)
def test_activations_round_trip(dtype, tolerance):
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(0)) * 10
    values, scale = encoding.encode_activations(x, dtype)
    raw = encoding.as_numpy(values)
    assert scale is None
    assert raw.dtype == {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}[dtype]
    decoded = decode(encoding.as_torch(raw), None, dtype)
    assert decoded.dtype == torch.float32
    relative = ((decoded - x).abs() / x.abs().clamp_min(1e-3)).max()
    assert relative <= tolerance
    if dtype == "bfloat16":  # the stored bits are exactly torch's bfloat16 bits
        assert torch.equal(decoded, x.bfloat16().float())


def float8_round_trip(x: torch.Tensor, what: str) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(stored uint8 bits, scale, decoded) of rows stored as float8, as activations or gradients."""
    if what == "activations":
        values, scale = encoding.encode_activations(x, "float8")
    else:
        values, scale = encoding.encode_gradients(x, "scaled-float8")
    raw = encoding.as_numpy(values)
    assert raw.dtype == np.uint8 and scale.dtype == torch.float32
    return raw, scale, decode(encoding.as_torch(raw), scale, "scaled-float8")


FLOAT8_ROW_ERROR = 2**-4 + 1e-3  # 3 mantissa bits; the bound docs/cache-format.md states


@pytest.mark.parametrize("what", ["activations", "gradients"])
def test_float8_rows_keep_the_documented_relative_error(what):
    if what == "gradients":
        x = gpt2_like_gradients()
    else:
        rng = np.random.default_rng(1)
        x = torch.from_numpy(
            (rng.standard_normal((4096, 768)) * rng.lognormal(0, 0.5, 768)).astype(np.float32)
        )
        x[:, :4] *= 50.0  # a few outlier dimensions, as GPT-2's residual stream has
    decoded = float8_round_trip(x, what)[2]
    error = per_token_relative_error(x, decoded)
    assert error.max() <= FLOAT8_ROW_ERROR
    assert error.median() <= 0.03, "typically ~2.5 %"
    assert bool(torch.isfinite(decoded).all())
    assert not bool(((x != 0) & (decoded == 0) & (x.abs() > 2**-17 * x.abs().amax(1, True))).any())


def test_float8_elements_keep_three_bits_and_vanish_only_below_the_range():
    """Within a row, an element keeps ≤ 2^-4 relative error down to 2^-13 of the row's largest
    magnitude, and stays non-zero above 2^-17 of it, whatever the row's own magnitude."""
    magnitudes = 2.0 ** -torch.linspace(0, 16.99, 600)  # from the row's max to just above 2^-17
    signs = torch.where(torch.arange(600) % 2 == 0, 1.0, -1.0)
    for row_max in (1e-30, 1e-4, 1.0, 3e3, 1e30):
        x = (magnitudes * signs * row_max).float()[None]
        decoded = float8_round_trip(x, "activations")[2]
        kept = x.abs() >= 2**-13 * row_max
        relative = (decoded - x).abs() / x.abs()
        assert relative[kept].max() <= 2**-4
        assert bool((decoded != 0).all()), f"no element of a row of max {row_max} vanished"
        assert bool(torch.isfinite(decoded).all())


def test_float8_never_overflows_and_scales_are_powers_of_two():
    g = gpt2_like_gradients(n=6, d=32)
    g[0] *= 1e9  # far above float8's range
    g[1] *= 1e-25  # far below it
    g[2] = 0.0  # the last position of a sequence
    raw, scale, decoded = float8_round_trip(g, "gradients")
    mantissa, _ = torch.frexp(scale)
    assert bool((mantissa == 0.5).all()) and scale[2] == 1.0
    assert (raw & 0x7F).max() < 0x7F, "no NaN bits"
    stored = torch.from_numpy(raw).view(torch.float8_e4m3fn).float()
    assert stored.abs().max() <= 256, "the largest magnitude lands in [128, 256], below 448"
    assert torch.equal(decoded[2], torch.zeros(32))
    nonzero = [0, 1, 3, 4, 5]
    assert per_token_relative_error(g[nonzero], decoded[nonzero]).max() <= FLOAT8_ROW_ERROR


def test_non_finite_values_are_refused():
    x = torch.ones(4, 8)
    x[2, 3] = float("nan")
    with pytest.raises(SaekitError, match=r"NaN or Inf \(rows \[2\]"):
        encoding.encode_activations(x, "float16")
    with pytest.raises(SaekitError, match="NaN or Inf"):
        encoding.encode_gradients(x, "scaled-float16")


def test_float16_overflow_is_refused_with_advice():
    with pytest.raises(SaekitError, match="--dtype bfloat16"):
        encoding.encode_activations(torch.full((2, 2), 1e5), "float16")


def test_float8_decodes_every_bit_pattern_as_torch_converts_it():
    """The CPU decodes float8 through a table; it must give torch's own (exact) conversion, the
    one CUDA uses, for all 256 patterns, strided views included."""
    bits = torch.arange(256).to(torch.uint8).reshape(2, 128)
    want = bits.view(torch.float8_e4m3fn).float()
    for stored in (bits, bits[:, 1::2]):  # contiguous, and a strided view as batches give
        expected = stored.view(torch.float8_e4m3fn).float()
        got = decode(stored, torch.ones(2), "scaled-float8")
        torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(want).sum() == 2, "0x7F and 0xFF are NaN, nothing else"


@pytest.mark.parametrize("element", ["float16", "bfloat16", "float8_e4m3fn"])
def test_finite_rows_agrees_with_isfinite_on_every_bit_pattern(element):
    """Every value of the element type (all 2**bits patterns, either sign), one per row and
    planted among finite values, is judged from its bits as `isfinite` judges it decoded."""
    dtype = encoding.TORCH_DTYPES[element]
    unsigned = np.dtype(f"uint{torch.finfo(dtype).bits}")
    patterns = np.arange(2 ** (8 * unsigned.itemsize), dtype=np.uint64).astype(unsigned)
    rows = np.zeros((len(patterns), 3), unsigned)  # zeros: finite in every format
    rows[:, 1] = patterns
    as_signed = torch.from_numpy(patterns.view(f"int{8 * unsigned.itemsize}"))
    expected = torch.isfinite(as_signed.view(dtype).float()).numpy()
    np.testing.assert_array_equal(finite_rows(rows, element), expected)
    assert 0 < expected.sum() < len(patterns)

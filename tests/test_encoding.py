"""Storage encodings: activation dtypes round-trip, gradients keep ≤1e-3 relative error."""

import numpy as np
import pytest
import torch

from saekit.cache_format import encoding
from saekit.errors import SaekitError


def gpt2_like_gradients(n: int = 4096, d: int = 768, seed: int = 0) -> torch.Tensor:
    """Student-t elements with a per-token lognormal scale around 1e-4, like GPT-2's gradients."""
    rng = np.random.default_rng(seed)
    g = rng.standard_t(3, (n, d)) * rng.lognormal(np.log(1e-4), 1.5, (n, 1))
    return torch.from_numpy(g.astype(np.float32))


def per_token_relative_error(g: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    g, decoded = g.double(), decoded.double()  # float32 norms of 1e-25-sized rows underflow
    return (decoded - g).norm(dim=1) / g.norm(dim=1)


def test_gradients_keep_per_token_relative_error_below_1e3():
    g = gpt2_like_gradients()
    values, scale = encoding.encode_gradients(g, "scaled-float16")
    assert values.dtype == torch.float16 and scale.dtype == torch.float32
    decoded = encoding.decode_gradients(values, scale)
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
    decoded = encoding.decode_gradients(values, scale)
    assert torch.equal(decoded[2], torch.zeros(32))
    nonzero = [0, 1, 3, 4, 5]
    assert per_token_relative_error(g[nonzero], decoded[nonzero]).max() <= 1e-3


def test_float32_gradients_are_exact():
    g = gpt2_like_gradients(n=8, d=16)
    values, scale = encoding.encode_gradients(g, "float32")
    assert scale is None
    assert torch.equal(encoding.decode_gradients(values, None), g)


@pytest.mark.parametrize(
    ("dtype", "tolerance"), [("float16", 1e-3), ("bfloat16", 8e-3), ("float32", 0.0)]
)
def test_activations_round_trip(dtype, tolerance):
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(0)) * 10
    raw = encoding.as_numpy(encoding.encode_activations(x, dtype))
    assert raw.dtype == {"float16": np.float16, "bfloat16": np.uint16, "float32": np.float32}[dtype]
    decoded = encoding.decode_activations(encoding.as_torch(raw), dtype)
    assert decoded.dtype == torch.float32
    relative = ((decoded - x).abs() / x.abs().clamp_min(1e-3)).max()
    assert relative <= tolerance
    if dtype == "bfloat16":  # the stored bits are exactly torch's bfloat16 bits
        assert torch.equal(decoded, x.bfloat16().float())


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

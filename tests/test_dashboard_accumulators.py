"""The streaming accumulators of `sae inspect` against brute force on small random data:
exact top-N, an unbiased reservoir, histograms and moments; none depends on batching."""

import numpy as np
import pytest
import torch

from saekit.dashboard.accumulators import (
    N_BINS,
    KeptRows,
    LogHistogram,
    Moments,
    UniformKeys,
    _mix32,
    _mul32,
    bin_edges,
    log_bin,
    value_keys,
)


def random_firings(seed, n_rows=3000, n_latents=7, density=0.3):
    """(row, latent, value) of random firings, rows increasing, with repeated values (ties)."""
    rng = np.random.default_rng(seed)
    fires = rng.random((n_rows, n_latents)) < density
    row, latent = np.nonzero(fires)
    value = np.round(rng.lognormal(0.0, 2.0, len(row)), 1) + 0.1  # rounding makes ties
    return torch.from_numpy(row), torch.from_numpy(latent), torch.from_numpy(value).float()


def feed(kept, row, latent, key, value, batch_rows, n_rows=3000):
    """Offer the firings in batches of `batch_rows` rows, in row order (as the pass does)."""
    for start in range(0, n_rows, batch_rows):
        take = (row >= start) & (row < start + batch_rows)
        kept.offer(latent[take], key[take], row[take], value[take])


@pytest.mark.parametrize("batch_rows", [1, 97, 3000])
def test_top_rows_are_the_exact_top_n(batch_rows):
    row, latent, value = random_firings(0)
    kept = KeptRows(7, 5, torch.device("cpu"))
    feed(kept, row, latent, value_keys(value), value, batch_rows)
    for cell in range(7):
        mine = latent == cell
        order = np.lexsort((row[mine].numpy(), -value[mine].numpy()))[:5]  # ties: earlier row
        rows, values = kept.entries(cell)
        assert rows == row[mine].numpy()[order].tolist()
        assert values == value[mine].numpy()[order].tolist()


def test_a_latent_with_fewer_firings_than_places_keeps_them_all():
    kept = KeptRows(3, 4, torch.device("cpu"))
    values = torch.tensor([2.0, 5.0])
    kept.offer(torch.tensor([1, 1]), value_keys(values), torch.tensor([10, 11]), values)
    assert kept.entries(1) == ([11, 10], [5.0, 2.0])
    assert kept.entries(0) == ([], []) and kept.entries(2) == ([], [])
    nothing = KeptRows(3, 0, torch.device("cpu"))  # --per-band 0: no sample at all
    nothing.offer(torch.tensor([1]), value_keys(values[:1]), torch.tensor([10]), values[:1])
    assert nothing.entries(1) == ([], [])


@pytest.mark.parametrize("batch_rows", [13, 3000])
def test_reservoir_is_the_brute_force_selection_by_key(batch_rows):
    row, latent, value = random_firings(1)
    key = UniformKeys(5, 7, torch.device("cpu"))(row, latent)
    kept = KeptRows(7, 6, torch.device("cpu"))
    feed(kept, row, latent, key, value, batch_rows)
    for cell in range(7):
        mine = latent == cell
        order = np.argsort(key[mine].numpy(), kind="stable")[:6]
        assert kept.entries(cell)[0] == row[mine].numpy()[order].tolist()


def test_reservoir_samples_every_firing_with_equal_probability():
    """40 firings of one latent, 8 kept: over 2000 seeds each firing is kept ~400 times
    (binomial sd 17.9), and the kept values average the population's."""
    n, capacity, seeds = 40, 8, 2000
    row = torch.arange(n) * 3
    latent = torch.full((n,), 2)
    value = torch.arange(1, n + 1).float()
    counts = np.zeros(n)
    means = []
    for seed in range(seeds):
        kept = KeptRows(3, capacity, torch.device("cpu"))
        kept.offer(latent, UniformKeys(seed, 3, torch.device("cpu"))(row, latent), row, value)
        rows, values = kept.entries(2)
        assert len(set(rows)) == capacity, "without replacement"
        counts[np.array(rows) // 3] += 1
        means.append(np.mean(values))
    expected = seeds * capacity / n
    sd = np.sqrt(seeds * (capacity / n) * (1 - capacity / n))
    assert np.all(np.abs(counts - expected) < 5 * sd), counts
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 90, f"chi-square {chi2:.1f} on 39 degrees of freedom"  # p < 1e-5 above 90
    assert np.mean(means) == pytest.approx(value.mean().item(), rel=0.01)


def test_uniform_keys_are_uniform_and_depend_on_seed_row_and_latent():
    rows = torch.arange(200_000, dtype=torch.int64) * 7919
    zeros = torch.zeros_like(rows)
    keys = UniformKeys(0, 2, torch.device("cpu"))(rows, zeros).numpy()
    assert keys.min() >= 0 and keys.max() < 2**32
    assert len(np.unique(keys)) == len(keys), "a latent's rows never share a key"
    counts = np.histogram(keys, bins=20, range=(0, 2**32))[0]
    assert np.all(np.abs(counts - 10_000) < 6 * np.sqrt(10_000 * 0.95))
    assert np.corrcoef(keys[:-1], keys[1:])[0, 1] == pytest.approx(0, abs=0.01)
    other_seed = UniformKeys(1, 2, torch.device("cpu"))(rows, zeros).numpy()
    other_latent = UniformKeys(0, 2, torch.device("cpu"))(rows, zeros + 1).numpy()
    for other in (other_seed, other_latent):
        assert np.mean(keys == other) < 1e-3
        assert np.corrcoef(keys, other)[0, 1] == pytest.approx(0, abs=0.01)
    far = UniformKeys(0, 2, torch.device("cpu"))(rows + (1 << 32), zeros).numpy()
    assert np.mean(keys == far) < 1e-3, "row bits above 32 matter"


def test_value_keys_rank_larger_values_first():
    values = torch.tensor([3e-7, 0.5, 0.5000001, 2.0, 7e5])
    keys = value_keys(values)
    assert torch.equal(torch.argsort(keys), torch.tensor([4, 3, 2, 1, 0]))
    assert bool((keys >= 0).all()) and bool((keys < 2**32).all())


def test_mul32_and_mix32_are_murmurs_32_bit_arithmetic():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2**32, 1000, dtype=np.int64)
    for constant in (0x85EBCA6B, 0xC2B2AE35, 0xFFFFFFFF):
        got = _mul32(torch.from_numpy(x), constant).numpy()
        assert [int(v) for v in got] == [(int(v) * constant) % 2**32 for v in x]

    def fmix32(h):  # MurmurHash3's finaliser on Python integers
        h ^= h >> 16
        h = (h * 0x85EBCA6B) % 2**32
        h ^= h >> 13
        h = (h * 0xC2B2AE35) % 2**32
        return h ^ (h >> 16)

    assert _mix32(torch.from_numpy(x)).tolist() == [fmix32(int(v)) for v in x]


def test_histogram_and_moments_match_brute_force():
    _, latent, value = random_firings(2)
    value = value * torch.from_numpy(np.random.default_rng(4).lognormal(0, 4, len(value))).float()
    histogram, moments = LogHistogram(7, torch.device("cpu")), Moments(7, torch.device("cpu"))
    for start in range(0, len(value), 501):
        part = slice(start, start + 501)
        histogram.add(latent[part], value[part])
        moments.add(latent[part], value[part])
    edges = np.array(bin_edges())
    assert len(edges) == N_BINS + 1 and edges[0] == pytest.approx(1e-6)
    for cell in range(7):
        v = value[latent == cell].double().numpy()
        clipped = np.clip(v, edges[0], edges[-1] * (1 - 1e-12))  # outside values: end bins
        expected = np.histogram(clipped, bins=edges)[0]
        np.testing.assert_array_equal(histogram.counts_SH[cell].numpy(), expected)
        assert moments.count_S[cell] == len(v)
        assert moments.sum_S[cell].item() == pytest.approx(v.sum(), rel=1e-12)
        assert moments.max_S[cell].item() == np.float32(v.max())
        assert moments.mean_S()[cell].item() == pytest.approx(v.mean(), rel=1e-12)
    assert value.min() < 1e-6 or value.max() > 1e6, "the data reach outside the binned range"


def test_log_bins_follow_their_edges():
    edges = torch.tensor(bin_edges(), dtype=torch.float64)
    middles = (edges[:-1] * edges[1:]).sqrt()
    assert torch.equal(log_bin(middles), torch.arange(N_BINS))
    assert log_bin(torch.tensor([1e-9, 1e9])).tolist() == [0, N_BINS - 1]

"""How a distributed run's SAEs are split into groups: by estimated cost, keeping SAEs that share
reads together when that is no slower."""

import pytest

from saekit.cache_format import ActivationStore
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store
from saekit.train.run import resolve_specs
from saekit.train.spec import parse_spec
from saekit.train.split import Cost, costs, read_costs, split, time_fraction

ACTS, GRADS = ("activations", "h"), ("gradients", "h")
READS = {ACTS: 1.0e6, GRADS: 1.0e6}


def uniform(flops, fields=frozenset({ACTS})):
    return Cost(flops, frozenset(fields))


def test_costs_are_balanced_over_the_groups():
    costs_ = {name: uniform(flops * 1e7) for name, flops in zip("abcd", [6, 5, 4, 3], strict=True)}
    groups = split(list(costs_), costs_, READS, 2)
    assert groups == [["a", "d"], ["b", "c"]], "6 + 3 and 5 + 4, not 6 + 5 and 4 + 3"
    assert time_fraction(groups, costs_, READS) == pytest.approx((9e7 + 1e6) / (18e7 + 1e6))


def test_saes_that_read_gradients_stay_together_when_that_is_no_slower():
    costs_ = {f"topk{i}": uniform(1e7) for i in range(4)}
    costs_ |= {f"gsae{i}": uniform(1e7, {ACTS, GRADS}) for i in range(4)}
    names = [name for pair in zip(list(costs_)[:4], list(costs_)[4:], strict=True) for name in pair]
    groups = split(names, costs_, READS, 2)
    assert groups == [["topk0", "topk1", "topk2", "topk3"], ["gsae0", "gsae1", "gsae2", "gsae3"]]


def test_reads_are_not_duplicated_for_saes_too_cheap_to_split():
    costs_ = {name: uniform(1.0) for name in "abc"}
    (group,) = split(list(costs_), costs_, {ACTS: 1e9}, 1)
    assert group == ["a", "b", "c"]
    assert len(split(list(costs_), costs_, {ACTS: 1e9}, 8)) <= 3, "never more groups than SAEs"


def test_every_sae_is_placed_once_in_a_deterministic_order():
    flops = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7]
    costs_ = {
        f"s{i}": uniform(f * 1e7, {ACTS, GRADS} if i % 3 else {ACTS}) for i, f in enumerate(flops)
    }
    names = list(costs_)
    groups = split(names, costs_, READS, 4)
    assert sorted(name for group in groups for name in group) == sorted(names)
    assert len(groups) == 4 and all(groups)
    for group in groups:
        assert group == sorted(group, key=names.index), "each group in the run's order"
    assert split(names, costs_, READS, 4) == groups


def test_an_sae_costs_its_variants_dense_products_and_reads_its_fields(tmp_path):
    path = tmp_path / "store.zarr"
    write_synthetic_store(path, synthetic_spec(1024, holdout_rows=128))
    store = ActivationStore.open(path)
    (hook,) = store.hooks
    specs = resolve_specs(
        [parse_spec("topk:k=4,latents=128"), parse_spec("gsae:k=4,latents=128")],
        {hook: 64},
        hook,
        None,
    )
    shapes = {spec.name: spec.shape({hook: 64}, hook) for spec in specs}
    by_name = costs(specs, shapes, store)
    topk, gsae = (by_name[spec.name] for spec in specs)
    assert topk.flops == 4 * (64 + 64) * 128, "TopK's sparse decoder: 4 dense products"
    assert gsae.fields == {("activations", hook), ("gradients", hook)}
    assert topk.fields == {("activations", hook)}
    reads = read_costs(store, gsae.fields, "cuda")
    assert reads[("activations", hook)] == 64 * 2 * 2e4, "float16 values, weighed for a GPU"
    assert read_costs(store, gsae.fields, "cpu")[("gradients", hook)] == 64 * 2 * 400

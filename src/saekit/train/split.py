"""How a distributed run's SAEs are split into groups, one group per device.

Every group streams the store itself (the same batches, in the same order), so a group's time per
row is the arithmetic of its SAEs plus the reads of the fields they need, each field once however
many of its SAEs read it. The cost of an SAE is its variant's dense products per row
(`Activation.dense_products`, each `d × latents` multiply-adds, over the input and output widths
of its shape); the cost of a field is its bytes per row in the store, weighed at what a byte read
costs in FLOPs of that arithmetic on the devices (`READ_FLOPS_PER_BYTE`). Two splits are made
and the better kept (the faster slowest group, then the less work in all): costliest first, each
SAE into the group whose estimate it raises the least; and the SAEs that read the same fields
side by side, cut into consecutive groups as evenly as such cuts allow — so SAEs that share reads
(g-SAEs their gradients, transcoders their MLP hooks) stay together whenever that is no slower.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from saekit.cache_format import ActivationStore
from saekit.cache_format.schema import ACTIVATIONS, GRADIENTS
from saekit.train.shape import Shape
from saekit.train.spec import ResolvedSpec
from saekit.train.variants import VARIANTS

# Reading a byte of a row costs about the time of this many FLOPs of SAE arithmetic (counted as
# dense products): a GPU sustains ~20 TFLOP/s on them while a loader delivers ~1 GB/s of rows;
# on a CPU, training runs at ~4e11 dense-equivalent FLOP/s (TopK's sparse products at the GPT-2
# shape, docs/benchmarks.md) against the same ~1 GB/s.
READ_FLOPS_PER_BYTE = {"cpu": 400.0, "cuda": 2e4}


def training_flops_per_row(spec: ResolvedSpec, d_in: int, d_out: int) -> float:
    """FLOPs of one training step per row: the variant's dense products, each a multiply-add
    over `latents` and the input (encoder) or output (decoder) width."""
    products = VARIANTS[spec.variant].dense_products
    return products * (d_in + d_out) * spec.latents


@dataclass(frozen=True)
class Cost:
    """What one SAE costs per row: its arithmetic, and the store fields it reads."""

    flops: float
    fields: frozenset[tuple[str, str]]  # (array, hook)


def costs(
    specs: list[ResolvedSpec], shapes: Mapping[str, Shape], store: ActivationStore
) -> dict[str, Cost]:
    """Each SAE's cost, by name (a cross-layer transcoder's latents counted once per layer)."""
    result = {}
    for spec in specs:
        shape = shapes[spec.name]
        layers = len(shape.layers or (None,))
        fields = {(ACTIVATIONS, hook) for hook in shape.hooks}
        if spec.needs_gradients:
            fields |= {(GRADIENTS, hook) for hook in shape.target_hooks}
        flops = training_flops_per_row(spec, shape.d_in, shape.d_out) * layers
        result[spec.name] = Cost(flops, frozenset(fields))
    return result


def read_costs(
    store: ActivationStore, fields: set[tuple[str, str]], device_type: str
) -> dict[tuple[str, str], float]:
    """What reading each field once per row costs, in FLOPs of SAE arithmetic on a device of
    that type (`cpu` or `cuda`): its bytes per row in the store (values only) weighed."""
    weight = READ_FLOPS_PER_BYTE[device_type]
    result = {}
    for array, hook in fields:
        storage = store.spec.encoding(array).storage_dtype
        result[array, hook] = weight * store.spec.hooks[hook].d * np.dtype(storage).itemsize
    return result


def estimate(
    names: list[str], costs: Mapping[str, Cost], reads: Mapping[tuple[str, str], float]
) -> float:
    """A group's estimated time per row, in FLOPs: its SAEs' arithmetic plus its reads (each
    field once)."""
    fields = frozenset().union(*(costs[name].fields for name in names))
    return sum(costs[name].flops for name in names) + read_flops(fields, reads)


def read_flops(fields: frozenset[tuple[str, str]], reads: Mapping[tuple[str, str], float]) -> float:
    """The time of reading `fields` once per row, in FLOPs."""
    return sum(reads[field] for field in fields)


def split(
    names: list[str], costs: Mapping[str, Cost], reads: Mapping[tuple[str, str], float], n: int
) -> list[list[str]]:
    """`names` in at most `n` groups (see the module docstring), each in `names`' order, the
    groups in the order of their first SAE; the same input gives the same split."""

    def rank(groups: list[list[str]]) -> tuple[float, float]:
        times = [estimate(group, costs, reads) for group in groups]
        return max(times), sum(times)  # the slowest group, then the work done in all

    candidates = [balanced(names, costs, reads, n), by_reads(names, costs, reads, n)]
    position = {name: i for i, name in enumerate(names)}
    best = min(candidates, key=rank)
    ordered = [sorted(group, key=position.__getitem__) for group in best if group]
    return sorted(ordered, key=lambda group: position[group[0]])


def balanced(
    names: list[str], costs: Mapping[str, Cost], reads: Mapping[tuple[str, str], float], n: int
) -> list[list[str]]:
    """Costliest first, each SAE into the group whose estimate it raises the least."""
    groups: list[list[str]] = [[] for _ in range(max(1, min(n, len(names))))]
    for name in sorted(names, key=lambda name: -costs[name].flops):  # stable: ties keep order
        best = min(
            range(len(groups)), key=lambda g: (estimate([*groups[g], name], costs, reads), g)
        )
        groups[best].append(name)
    return groups


def by_reads(
    names: list[str], costs: Mapping[str, Cost], reads: Mapping[tuple[str, str], float], n: int
) -> list[list[str]]:
    """SAEs that read the same fields side by side (costliest first within each), cut into at
    most n consecutive groups so that the slowest is as fast as such cuts allow."""
    classes = list(dict.fromkeys(costs[name].fields for name in names))
    order = sorted(names, key=lambda name: (classes.index(costs[name].fields), -costs[name].flops))

    def cut(limit: float) -> list[list[str]]:
        groups: list[list[str]] = [[]]
        flops, fields = 0.0, frozenset[tuple[str, str]]()
        for name in order:
            cost = costs[name]
            grown = flops + cost.flops + read_flops(fields | cost.fields, reads)
            if groups[-1] and grown > limit:
                groups.append([])
                flops, fields = 0.0, frozenset()
            groups[-1].append(name)
            flops, fields = flops + cost.flops, fields | cost.fields
        return groups

    low = max(estimate([name], costs, reads) for name in names)
    high = estimate(order, costs, reads)
    for _ in range(60):  # bisect the limit: the smallest one that needs at most n groups
        middle = (low + high) / 2
        if len(cut(middle)) <= n:
            high = middle
        else:
            low = middle
    return cut(high)


def time_fraction(
    groups: list[list[str]], costs: Mapping[str, Cost], reads: Mapping[tuple[str, str], float]
) -> float:
    """The slowest group's estimate over that of one process training every SAE: the fraction
    of the one-device time the split should take (on devices of equal speed)."""
    everything = [name for group in groups for name in group]
    slowest = max(estimate(group, costs, reads) for group in groups)
    return slowest / estimate(everything, costs, reads)

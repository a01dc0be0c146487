"""Sharded harvests: every shard of a store in this process, or as tasks on dask.distributed.

A store of `shards` shards splits its blocks into that many contiguous ranges; each shard is
harvested independently (own lock, own commit record, resumable on its own) and all of them
write the rows a single-process harvest writes. Shards run as tasks on a cluster
(`saekit.base.cluster`: `--cluster tcp://host:8786` or `local[:W]`), or one after another in this
process. A task that fails or whose worker dies is retried by dask and resumes its shard from the
last committed block; the shard's lock makes sure two attempts never write it at once.

Placement: every shard task takes one `saekit-harvest` resource, so a worker runs one shard (and
holds one copy of the model) at a time, on its own GPU (`saekit.base.cluster.worker_device`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from saekit.base.cluster import Cluster, on_worker, run_tasks
from saekit.base.errors import SaekitError
from saekit.cache_format import ActivationStore
from saekit.cache_format.locking import new_owner
from saekit.harvest.harvester import (
    HarvestConfig,
    HarvestPlan,
    HarvestResult,
    plan_harvest,
    run_harvest,
)

TASK_RETRIES = 3
HARVEST_RESOURCE = "saekit-harvest"  # each shard task takes one: one shard per worker at once


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` -> (I, N)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise SaekitError(f"--shard takes I/N (e.g. 0/4), not {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise SaekitError(f"--shard {text}: I must be in 0..N-1")
    return index, count


def _harvest_shard(config: HarvestConfig) -> HarvestResult:
    """A dask task: harvest one shard on this worker's own device."""
    device = on_worker(config.device, HARVEST_RESOURCE).device
    return run_harvest(plan_harvest(dataclasses.replace(config, device=str(device))))


def _rows_committed(config: HarvestConfig) -> int:
    try:
        return ActivationStore.open(config.out, config.storage_options).n_rows_committed
    except SaekitError:  # not created yet
        return 0


def harvest_shards(
    plan: HarvestPlan,
    cluster: str | None = None,
    on_rows: Callable[[int], None] | None = None,
) -> list[HarvestResult]:
    """Harvest every shard of a validated plan, on `cluster` or one after another here.

    `on_rows` is called now and then with the number of rows committed so far.
    """
    config = plan.config
    owner = config.owner or new_owner()
    configs = [
        dataclasses.replace(config, shard=shard, owner=owner) for shard in range(config.shards)
    ]
    report = (lambda: on_rows(_rows_committed(config))) if on_rows else (lambda: None)
    if cluster is None:
        results = []
        for shard_config in configs:
            results.append(run_harvest(dataclasses.replace(plan, config=shard_config)))
            report()
        return results
    with Cluster(cluster, HARVEST_RESOURCE) as running:
        results = run_tasks(
            running, _harvest_shard, configs, "shard", owner, retries=TASK_RETRIES, poll=report
        )
    report()
    return results

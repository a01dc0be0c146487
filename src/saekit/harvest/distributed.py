"""Sharded harvests: every shard of a store in this process, or as tasks on dask.distributed.

A store of `shards` shards splits its blocks into that many contiguous ranges; each shard is
harvested independently (own lock, own commit record, resumable on its own) and all of them
write the rows a single-process harvest writes. Shards run as tasks on an existing scheduler
(`--cluster tcp://host:8786`), on a `LocalCluster` started here (`--cluster local[:W]`, one
worker per GPU when there are GPUs), or one after another in this process. A task that fails or
whose worker dies is retried by dask and resumes its shard from the last committed block; the
shard's lock makes sure two attempts never write it at once.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from saekit.cache_format import ActivationStore
from saekit.cache_format.locking import new_owner
from saekit.errors import SaekitError
from saekit.harvest.harvester import (
    HarvestConfig,
    HarvestPlan,
    HarvestResult,
    plan_harvest,
    run_harvest,
)

TASK_RETRIES = 3
HARVEST_RESOURCE = "saekit-harvest"  # one harvest task at a time on a local worker


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
    """A dask task: harvest one shard (on a local GPU cluster, on this worker's own GPU)."""
    from distributed import get_worker

    worker = get_worker()
    device = config.device
    if device in ("auto", "cuda") and torch.cuda.is_available() and isinstance(worker.name, int):
        device = f"cuda:{worker.name % torch.cuda.device_count()}"
    torch.set_num_threads(max(1, worker.state.nthreads))
    return run_harvest(plan_harvest(dataclasses.replace(config, device=device)))


def _local_cluster(workers: int | None) -> Any:
    from distributed import LocalCluster

    gpus = torch.cuda.device_count()
    count = workers or gpus or 2
    return LocalCluster(
        n_workers=count,
        threads_per_worker=max(1, (os.cpu_count() or 1) // count),
        processes=True,
        resources={HARVEST_RESOURCE: 1},
        dashboard_address=None,
    )


def connect(cluster: str) -> tuple[Any, dict[str, int] | None]:
    """A dask client for `local`, `local:W` or a scheduler address, and the task resources."""
    from distributed import Client

    if cluster == "local" or cluster.startswith("local:"):
        count = cluster.partition(":")[2]
        if count and not count.isdigit():
            raise SaekitError(f"--cluster local:W takes a number of workers, not {count!r}")
        return Client(_local_cluster(int(count) if count else None)), {HARVEST_RESOURCE: 1}
    try:
        return Client(cluster, timeout="10s"), None
    except (OSError, TimeoutError) as error:
        raise SaekitError(f"cannot reach the dask scheduler at {cluster}: {error}") from None


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
    if cluster is None:
        results = []
        for shard_config in configs:
            results.append(run_harvest(dataclasses.replace(plan, config=shard_config)))
            if on_rows:
                on_rows(_rows_committed(config))
        return results
    client, resources = connect(cluster)
    with client:
        futures = [
            client.submit(
                _harvest_shard,
                c,
                key=f"saekit-harvest-shard-{c.shard}-{owner}",
                retries=TASK_RETRIES,
                resources=resources,
                pure=False,
            )
            for c in configs
        ]
        while not all(f.done() for f in futures):
            if on_rows:
                on_rows(_rows_committed(config))
            time.sleep(1.0)
        results = client.gather(futures)
    if on_rows:
        on_rows(_rows_committed(config))
    return results

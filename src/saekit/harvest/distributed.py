"""Sharded harvests: every shard of a store in this process, or as tasks on dask.distributed.

A store of `shards` shards splits its blocks into that many contiguous ranges; each shard is
harvested independently (own lock, own commit record, resumable on its own) and all of them
write the rows a single-process harvest writes. Shards run as tasks on an existing scheduler
(`--cluster tcp://host:8786`), on a `LocalCluster` started here (`--cluster local[:W]`, one
worker per GPU when there are GPUs), or one after another in this process. A task that fails or
whose worker dies is retried by dask and resumes its shard from the last committed block; the
shard's lock makes sure two attempts never write it at once.

Placement: every shard task needs one `saekit-harvest` resource, so a worker runs one shard (and
holds one copy of the model) at a time; workers must offer it (`dask worker ADDRESS --resources
saekit-harvest=1`; the local clusters started here do). A worker uses the GPU it was given with
`CUDA_VISIBLE_DEVICES` (the local clusters started here give worker i the i-th GPU this process
sees; dask-cuda's `LocalCUDACluster` does the same) — see `worker_device` for the whole rule.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from saekit.base.devices import resolve_device
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
VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` -> (I, N)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise SaekitError(f"--shard takes I/N (e.g. 0/4), not {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise SaekitError(f"--shard {text}: I must be in 0..N-1")
    return index, count


def worker_device(
    requested: str, worker_name: object, environ: Mapping[str, str], gpus: int
) -> str:
    """The device a shard task uses on a dask worker (a pure function, for testing).

    - `cpu` and `cuda:N` are taken as given; so is anything on a worker that sees no GPU (`auto`
      becomes the CPU there, `cuda` is refused by the device resolver);
    - a worker started with its own `CUDA_VISIBLE_DEVICES` (the local clusters started here,
      dask-cuda, `CUDA_VISIBLE_DEVICES=i dask worker ...`) uses `cuda:0`, the first GPU it sees;
    - otherwise a worker named by an integer i (a plain `LocalCluster`) uses `cuda:{i mod gpus}`;
    - otherwise a worker that sees one GPU uses it, and one that sees several is refused: it
      cannot tell which is its own (`dask worker ADDRESS` names workers by their address).
    """
    if requested == "cpu" or requested.startswith("cuda:") or gpus == 0:
        return requested
    if environ.get(VISIBLE_DEVICES, "").strip():
        return "cuda:0"
    if isinstance(worker_name, int):
        return f"cuda:{worker_name % gpus}"
    if gpus == 1:
        return "cuda:0"
    raise SaekitError(
        f"dask worker {worker_name} sees {gpus} GPUs and has no CUDA_VISIBLE_DEVICES, so its "
        "own GPU is unknown; start one worker per GPU: CUDA_VISIBLE_DEVICES=i dask worker "
        f"ADDRESS --nthreads T --resources {HARVEST_RESOURCE}=1"
    )


def gpu_assignments(workers: int, environ: Mapping[str, str], gpus: int) -> list[str | None]:
    """`CUDA_VISIBLE_DEVICES` of each worker of a local cluster: worker i gets the (i mod n)-th
    of the n GPUs this process sees (None for all on a machine without GPUs)."""
    if gpus == 0:
        return [None] * workers
    visible = environ.get(VISIBLE_DEVICES, "").strip()
    ids = [v.strip() for v in visible.split(",")][:gpus] if visible else list(map(str, range(gpus)))
    return [ids[i % len(ids)] for i in range(workers)]


def _harvest_shard(config: HarvestConfig) -> HarvestResult:
    """A dask task: harvest one shard on this worker's own device."""
    from distributed import get_worker

    worker = get_worker()
    requested = worker_device(config.device, worker.name, os.environ, torch.cuda.device_count())
    device = resolve_device(requested)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(max(1, worker.state.nthreads))
    return run_harvest(plan_harvest(dataclasses.replace(config, device=str(device))))


def _local_cluster(workers: int | None) -> Any:
    """A LocalCluster of W workers (default: one per GPU, else 2), each offering one harvest
    resource and, on a GPU machine, seeing only its own GPU."""
    from distributed import LocalCluster

    gpus = torch.cuda.device_count()
    count = workers or gpus or 2
    cluster = LocalCluster(
        n_workers=0,
        threads_per_worker=max(1, (os.cpu_count() or 1) // count),
        processes=True,
        resources={HARVEST_RESOURCE: 1},
        dashboard_address=None,
    )
    for name, visible in enumerate(gpu_assignments(count, os.environ, gpus)):
        spec = copy.deepcopy(cluster.new_spec)  # a Nanny: it sets `env` before the worker starts
        if visible is not None:
            spec["options"]["env"] = {VISIBLE_DEVICES: visible}
        cluster.worker_spec[name] = spec
    cluster.scale(count)
    return cluster


def check_harvest_workers(workers: dict[str, dict[str, Any]], address: str) -> None:
    """Refuse a cluster whose workers (the scheduler's `workers` info) offer no harvest
    resource: the shard tasks would wait for one forever."""
    if workers and not any(
        w.get("resources", {}).get(HARVEST_RESOURCE, 0) >= 1 for w in workers.values()
    ):
        raise SaekitError(
            f"no worker of the dask cluster at {address} offers the resource "
            f"{HARVEST_RESOURCE}, which each shard task takes (one at a time per worker); start "
            f"workers with dask worker {address} --resources {HARVEST_RESOURCE}=1"
        )


def connect(cluster: str) -> Any:
    """A dask client for `local`, `local:W` or a scheduler address whose workers can harvest."""
    from distributed import Client

    if cluster == "local" or cluster.startswith("local:"):
        count = cluster.partition(":")[2]
        if count and not count.isdigit():
            raise SaekitError(f"--cluster local:W takes a number of workers, not {count!r}")
        return Client(_local_cluster(int(count) if count else None))
    try:
        client = Client(cluster, timeout="10s")
    except (OSError, TimeoutError) as error:
        raise SaekitError(f"cannot reach the dask scheduler at {cluster}: {error}") from None
    try:
        check_harvest_workers(client.scheduler_info()["workers"], cluster)
    except SaekitError:
        client.close()
        raise
    return client


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
    with connect(cluster) as client:
        futures = [
            client.submit(
                _harvest_shard,
                c,
                key=f"saekit-harvest-shard-{c.shard}-{owner}",
                retries=TASK_RETRIES,
                resources={HARVEST_RESOURCE: 1},
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

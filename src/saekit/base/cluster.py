"""dask.distributed clusters for saekit's device tasks: harvest shards, training groups and a
recipe's evaluations, one task per device at a time.

`--cluster` names the cluster: `local` or `local:W` starts a `LocalCluster` of W worker
processes here (default: one per GPU, else 2), in which worker i sees only the i-th GPU of this
process (its own `CUDA_VISIBLE_DEVICES`); anything else is the address of a running scheduler.
Every task takes one unit of its kind's *resource* (`saekit-harvest`, `saekit-train`), so a
worker runs one such task — one copy of a model, one group of SAEs — at a time: workers must
offer it (`dask worker ADDRESS --resources saekit-train=1`; the local clusters started here do).
A worker uses the GPU it was given (see `worker_device` for the whole rule).

A task whose worker dies is rescheduled by dask on another worker (up to dask's
`allowed-failures`, 3 by default); the tasks are written to resume their work when that happens.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from saekit.base.devices import resolve_device
from saekit.base.errors import SaekitError

VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
POLL_SECONDS = 1.0  # how often a waiting caller hears of progress
CONNECT_TIMEOUT = "10s"


def worker_device(
    requested: str, worker_name: object, environ: Mapping[str, str], gpus: int, resource: str
) -> str:
    """The device a task uses on a dask worker (a pure function, for testing).

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
        f"ADDRESS --nthreads T --resources {resource}=1"
    )


def gpu_assignments(workers: int, environ: Mapping[str, str], gpus: int) -> list[str | None]:
    """`CUDA_VISIBLE_DEVICES` of each worker of a local cluster: worker i gets the (i mod n)-th
    of the n GPUs this process sees (None for all on a machine without GPUs)."""
    if gpus == 0:
        return [None] * workers
    visible = environ.get(VISIBLE_DEVICES, "").strip()
    ids = [v.strip() for v in visible.split(",")][:gpus] if visible else list(map(str, range(gpus)))
    return [ids[i % len(ids)] for i in range(workers)]


class Placement(NamedTuple):
    """Where a task runs on its worker: its device, and the CPU threads the worker has."""

    device: torch.device
    threads: int


def on_worker(requested: str, resource: str) -> Placement:
    """Inside a task: this worker's own device (made current) and its threads (torch's too)."""
    from distributed import get_worker

    worker = get_worker()
    gpus = torch.cuda.device_count()
    device = resolve_device(worker_device(requested, worker.name, os.environ, gpus, resource))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    threads = max(1, worker.state.nthreads)
    torch.set_num_threads(threads)
    return Placement(device, threads)


def local_workers(count: int | None) -> int:
    """Workers of `--cluster local[:W]`: W, else one per GPU, else 2."""
    return count or torch.cuda.device_count() or 2


def local_cluster(workers: int, resource: str) -> Any:
    """A LocalCluster of worker processes, each offering one `resource` and, on a GPU machine,
    seeing only its own GPU. dask's own messages below errors (a worker slow to shut down, one
    restarted) stay off stderr, which is the commands' one line on failure."""
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=0,
        threads_per_worker=max(1, (os.cpu_count() or 1) // workers),
        processes=True,
        resources={resource: 1},
        dashboard_address=None,
        silence_logs=logging.ERROR,
    )
    for name, visible in enumerate(gpu_assignments(workers, os.environ, torch.cuda.device_count())):
        spec = copy.deepcopy(cluster.new_spec)  # a Nanny: it sets `env` before the worker starts
        if visible is not None:
            spec["options"]["env"] = {VISIBLE_DEVICES: visible}
        cluster.worker_spec[name] = spec
    cluster.scale(workers)
    return cluster


def offering(workers: dict[str, dict[str, Any]], resource: str) -> int:
    """How many of the scheduler's workers (its `workers` info) offer `resource`."""
    return sum(w.get("resources", {}).get(resource, 0) >= 1 for w in workers.values())


def check_workers(workers: dict[str, dict[str, Any]], address: str, resource: str) -> None:
    """Refuse a cluster whose workers offer no `resource`: the tasks would wait for one forever
    (a cluster without workers yet is accepted: they may still come)."""
    if workers and not offering(workers, resource):
        raise SaekitError(
            f"no worker of the dask cluster at {address} offers the resource {resource}, which "
            f"each task takes (one at a time per worker); start workers with dask worker "
            f"{address} --resources {resource}=1"
        )


class Cluster:
    """The cluster `--cluster` names, connected when first used (so that bad input is refused
    before any worker starts) and closed with the context (a local one is shut down)."""

    def __init__(self, name: str, resource: str) -> None:
        self.name, self.resource = name, resource
        self.local_count: int | None = None
        if name == "local" or name.startswith("local:"):
            count = name.partition(":")[2]
            if count and (not count.isdigit() or int(count) < 1):
                raise SaekitError(f"--cluster local:W takes a number of workers, not {count!r}")
            self.local_count = local_workers(int(count) if count else None)
        self._client: Any = None

    @property
    def is_local(self) -> bool:
        return self.local_count is not None

    def client(self) -> Any:
        """The dask client, connecting (or starting the local cluster) on first use."""
        from distributed import Client

        if self._client is not None:
            return self._client
        if self.local_count is not None:
            self._client = Client(local_cluster(self.local_count, self.resource))
            return self._client
        try:
            client = Client(self.name, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as error:
            raise SaekitError(f"cannot reach the dask scheduler at {self.name}: {error}") from None
        try:
            check_workers(client.scheduler_info()["workers"], self.name, self.resource)
        except SaekitError:
            client.close()
            raise
        self._client = client
        return client

    def workers(self) -> int:
        """Workers that offer the resource (at least 1: tasks wait for one to come)."""
        if self.local_count is not None:
            return self.local_count
        return max(1, offering(self.client().scheduler_info()["workers"], self.resource))

    def close(self) -> None:
        if self._client is not None:
            cluster = self._client.cluster
            self._client.close()
            if cluster is not None:
                cluster.close()
            self._client = None

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def run_tasks(
    cluster: Cluster,
    function: Callable[..., Any],
    arguments: list[Any],
    what: str,
    owner: str,
    retries: int = 0,
    poll: Callable[[], None] = lambda: None,
    stop: Callable[[], None] = lambda: None,
) -> list[Any]:
    """Run `function(argument)` for every argument as tasks taking one resource each (`what`
    names one, e.g. "shard"; `owner` is an id of this run, part of every task's key); return
    their results in order. `poll` is called every second while they run. When one fails,
    `stop` is called (to tell the others to stop), the others are waited for and the first
    error is raised; a task whose workers kept dying is one line naming it."""
    from distributed import KilledWorker, wait

    client = cluster.client()
    futures = [
        client.submit(
            function,
            argument,
            key=f"saekit-{what}-{index}-{owner}",
            retries=retries,
            resources={cluster.resource: 1},
            pure=False,
        )
        for index, argument in enumerate(arguments)
    ]
    pending, failed = set(futures), None
    while pending:
        with contextlib.suppress(TimeoutError):  # nothing finished within the poll interval
            _, pending = wait(pending, timeout=POLL_SECONDS, return_when="FIRST_COMPLETED")
        poll()
        if failed is None:
            failed = next((f for f in futures if f.status == "error"), None)
            if failed is not None:
                stop()
    if failed is not None:
        try:
            failed.result()
        except KilledWorker:
            raise SaekitError(
                f"{what} {futures.index(failed)}: its dask workers died too often "
                "(dask's allowed-failures); check the workers' memory and logs, then run the "
                "same command again to resume"
            ) from None
    return client.gather(futures)

"""Sharded harvests: shards in any order, on any workers, give the single-process store."""

import os

import numpy as np
import pytest

import kill_switch
from helpers import snapshot
from kill_switch import count_events
from saekit.base.cluster import (
    check_workers,
    gpu_assignments,
    local_cluster,
    local_workers,
    worker_device,
)
from saekit.base.errors import SaekitError
from saekit.cache_format import ActivationStore
from saekit.cache_format.locking import local_lock
from saekit.harvest.distributed import HARVEST_RESOURCE

distributed = pytest.importorskip("distributed")


def args(tiny_lm, corpus, out, *extra):
    return [
        "harvest", "--model", str(tiny_lm), "--dataset", str(corpus), "--out", str(out),
        "--hook", "blocks.1.hook_resid_post", "--tokens", "4800", "--holdout-tokens", "480",
        "--context-size", "24", "--batch-size", "4", "--rows-per-chunk", "96",
        "--chunks-per-block", "2", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def single_harvest(tiny_lm, corpus, tmp_path_factory):
    """The same harvest done by one process, unsharded, and the number of writes it made."""
    from saekit.cli import main

    out = tmp_path_factory.mktemp("ref") / "single.zarr"
    with count_events() as events, pytest.raises(SystemExit) as done:
        main(args(tiny_lm, corpus, out))
    assert done.value.code in (0, None)
    return ActivationStore.open(out), len(events)


@pytest.fixture(scope="module")
def reference(single_harvest):
    return single_harvest[0]


def assert_same_rows(store, reference):
    """Every (sequence, position) once, with the same token, loss, activation and gradient."""
    assert store.complete and store.n_rows_committed == reference.n_rows_committed == 4800
    fields = ["sequence", "position", "tokens", "loss", "activations", "gradients"]
    got = store.read(fields, 0, store.n_rows_committed)
    want = reference.read(fields, 0, reference.n_rows_committed)
    keys = got["sequence"] * 24 + got["position"]
    assert len(np.unique(keys)) == len(keys), "no duplicated rows"
    for name in fields:
        np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.slow  # three shard harvests and a single-process one to compare
def test_shards_one_after_another(run_cli, tiny_lm, corpus, tmp_path, reference):
    result = run_cli(*args(tiny_lm, corpus, tmp_path / "s.zarr", "--shards", "3"))
    assert result.exit_code == 0, result.stderr
    store = ActivationStore.open(tmp_path / "s.zarr")
    assert store.spec.layout.shards == 3
    assert_same_rows(store, reference)


@pytest.mark.slow  # three shard harvests and a single-process one to compare
def test_shards_by_hand_in_any_order(run_cli, tiny_lm, corpus, tmp_path, reference):
    out = tmp_path / "s.zarr"
    assert run_cli(*args(tiny_lm, corpus, out, "--shard", "2/3")).exit_code == 0
    partial = ActivationStore.open(out)
    first, last = partial.spec.layout.shard_rows(2)
    assert not partial.complete and partial.committed == [(first, last)]
    assert run_cli("verify", out).exit_code == 0, "a partly harvested store verifies"
    info = run_cli("info", out)
    assert f"{last - first:,} committed" in info.stdout
    for shard in ("0/3", "1/3"):
        assert run_cli(*args(tiny_lm, corpus, out, "--shard", shard)).exit_code == 0
    assert_same_rows(ActivationStore.open(out), reference)


def test_a_different_shard_count_is_refused(run_cli, tiny_lm, corpus, tmp_path):
    out = tmp_path / "s.zarr"
    assert run_cli(*args(tiny_lm, corpus, out, "--shard", "0/3")).exit_code == 0
    before = snapshot(out)
    result = run_cli(*args(tiny_lm, corpus, out, "--shard", "0/2"))
    assert result.exit_code == 2 and "layout.shards (store: 3, now: 2)" in result.stderr
    assert snapshot(out) == before


def test_two_writers_on_one_shard(run_cli, tiny_lm, corpus, tmp_path):
    out = tmp_path / "s.zarr"
    assert run_cli(*args(tiny_lm, corpus, out, "--shard", "0/3")).exit_code == 0
    committed = ActivationStore.open(out).committed
    with local_lock(out, "shard-00001"):  # another cluster is writing shard 1
        result = run_cli(*args(tiny_lm, corpus, out, "--shard", "1/3"))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "shard-00001 of store" in result.stderr and "another process" in result.stderr
    assert ActivationStore.open(out).committed == committed, "nothing committed was lost"


@pytest.mark.parametrize("bad", [["--shard", "3/3"], ["--shard", "x"], ["--cluster", "local"]])
def test_bad_shard_options(run_cli, tiny_lm, corpus, tmp_path, bad):
    result = run_cli(*args(tiny_lm, corpus, tmp_path / "s.zarr", *bad))
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
    assert not (tmp_path / "s.zarr").exists()


def test_sharding_needs_a_token_count(run_cli, tiny_lm, corpus, tmp_path):
    command = args(tiny_lm, corpus, tmp_path / "s.zarr", "--shards", "2")
    index = command.index("--tokens")
    del command[index : index + 2]
    result = run_cli(*command)
    assert result.exit_code == 2 and "needs --tokens" in result.stderr


@pytest.mark.slow  # waits out the 10 s timeout of the dask client
def test_unreachable_scheduler(run_cli, tiny_lm, corpus, tmp_path):
    command = args(
        tiny_lm, corpus, tmp_path / "s.zarr", "--shards", "2", "--cluster", "tcp://127.0.0.1:9"
    )
    result = run_cli(*command)
    assert result.exit_code == 2 and "cannot reach the dask scheduler" in result.stderr


@pytest.mark.slow  # a dask LocalCluster of two worker processes
def test_local_cluster_of_two_workers(run_cli, tiny_lm, corpus, tmp_path, reference):
    out = tmp_path / "s.zarr"
    result = run_cli(*args(tiny_lm, corpus, out, "--shards", "4", "--cluster", "local:2"))
    assert result.exit_code == 0, result.stderr
    assert_same_rows(ActivationStore.open(out), reference)


@pytest.mark.slow  # a dask cluster whose workers are killed mid-shard
def test_killed_worker_is_resumed_without_duplicates(tiny_lm, corpus, tmp_path, single_harvest):
    """Workers killed mid-shard: dask retries the tasks elsewhere; the shards resume."""
    from distributed import Client, LocalCluster

    from saekit.cli import main

    reference, writes = single_harvest
    out = tmp_path / "s.zarr"
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            resources={HARVEST_RESOURCE: 1},
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        pids = list(client.run(os.getpid).values())
        # every worker kills itself half-way through the writes of a shard (a shard makes
        # about half of the single harvest's writes); the workers that replace them are unarmed
        client.run(kill_switch.arm, writes // 4)
        with pytest.raises(SystemExit) as done:
            main(
                args(tiny_lm, corpus, out, "--shards", "2", "--cluster", cluster.scheduler_address)
            )
        assert done.value.code in (0, None)
        assert not any(map(alive, pids)), "the workers died while writing their shards"
    assert_same_rows(ActivationStore.open(out), reference)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- placement on GPUs ---------------------------------------------------------------------------

ADDRESS = "tcp://10.0.0.5:40123"  # how `dask worker ADDRESS` names a worker


@pytest.mark.parametrize(
    ("requested", "name", "environ", "gpus", "expected"),
    [
        ("auto", ADDRESS, {"CUDA_VISIBLE_DEVICES": "3"}, 1, "cuda:0"),  # its own GPU, by env
        ("cuda", 2, {"CUDA_VISIBLE_DEVICES": "1"}, 1, "cuda:0"),  # dask-cuda: no second rotation
        ("auto", 3, {}, 2, "cuda:1"),  # a plain LocalCluster's integer names
        ("auto", ADDRESS, {}, 1, "cuda:0"),  # the only GPU
        ("auto", ADDRESS, {}, 0, "auto"),  # no GPU: the resolver makes it the CPU
        ("cpu", 1, {}, 4, "cpu"),
        ("cuda:1", ADDRESS, {}, 4, "cuda:1"),  # as asked
        ("auto", ADDRESS, {"CUDA_VISIBLE_DEVICES": " "}, 1, "cuda:0"),
    ],
)
def test_each_worker_uses_its_own_gpu(requested, name, environ, gpus, expected):
    assert worker_device(requested, name, environ, gpus, HARVEST_RESOURCE) == expected


def test_a_worker_that_cannot_tell_its_gpu_is_refused():
    with pytest.raises(SaekitError) as error:
        worker_device("auto", ADDRESS, {}, 4, HARVEST_RESOURCE)
    assert "CUDA_VISIBLE_DEVICES=i dask worker" in str(error.value)
    assert "--resources saekit-harvest=1" in str(error.value)


@pytest.mark.parametrize(
    ("workers", "environ", "gpus", "expected"),
    [
        (2, {}, 2, ["0", "1"]),
        (3, {}, 2, ["0", "1", "0"]),
        (2, {"CUDA_VISIBLE_DEVICES": "5,7"}, 2, ["5", "7"]),  # this process's own GPU list
        (2, {"CUDA_VISIBLE_DEVICES": "GPU-aa, GPU-bb"}, 2, ["GPU-aa", "GPU-bb"]),
        (2, {}, 0, [None, None]),
    ],
)
def test_local_workers_get_one_gpu_each(workers, environ, gpus, expected):
    assert gpu_assignments(workers, environ, gpus) == expected


def test_workers_must_offer_the_harvest_resource():
    check_workers({}, ADDRESS, HARVEST_RESOURCE)  # no worker yet: the tasks wait for one
    with_resource = {"a": {"resources": {HARVEST_RESOURCE: 1}}, "b": {"resources": {}}}
    check_workers(with_resource, ADDRESS, HARVEST_RESOURCE)
    with pytest.raises(SaekitError, match="--resources saekit-harvest=1"):
        check_workers({"a": {"resources": {}}, "b": {}}, ADDRESS, HARVEST_RESOURCE)


@pytest.mark.slow  # a dask LocalCluster of two worker processes
def test_a_local_cluster_gives_each_worker_its_gpu_and_a_harvest_resource(monkeypatch):
    """On a (pretend) machine of two GPUs, each worker process sees only its own."""
    from distributed import Client

    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)  # in this process only
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    with local_cluster(local_workers(None), HARVEST_RESOURCE) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        seen = client.run(
            lambda dask_worker: (dask_worker.name, os.environ["CUDA_VISIBLE_DEVICES"])
        )
        resources = [w["resources"] for w in client.scheduler_info()["workers"].values()]
    assert sorted(seen.values()) == [(0, "5"), (1, "7")]
    assert resources == [{HARVEST_RESOURCE: 1}] * 2


def test_an_external_cluster_without_the_resource_is_refused(run_cli, tiny_lm, corpus, tmp_path):
    from distributed import LocalCluster

    out = tmp_path / "s.zarr"
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        result = run_cli(
            *args(tiny_lm, corpus, out, "--shards", "2", "--cluster", cluster.scheduler_address)
        )
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"dask worker {cluster.scheduler_address} --resources saekit-harvest=1" in result.stderr
    assert not out.exists()

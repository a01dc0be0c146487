"""`sae train` in groups: a run's SAEs split over devices (dask workers, or in turn here) end as
the same run one process trains — the same SAEs bit for bit, the same directory — whether a
worker is killed, the run resumed, or a group fails."""

import json
import os
import subprocess

import pytest

import kill_switch
from helpers import snapshot
from kill_switch import KILLED, child_command
from saekit.base.cluster import Cluster, local_cluster
from saekit.base.errors import SaekitError
from saekit.base.outputs import RUN, marker_kind
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store
from saekit.train import (
    TRAIN_RESOURCE,
    Observer,
    TrainRequest,
    TrainSettings,
    parse_spec,
    train,
)
from saekit.train.checkpoint import Checkpoints, run_finished
from saekit.train.distributed import GROUPS_DIR, SPLIT_FILE
from saekit.train.metrics import TIMING_KEYS, read_metrics
from test_train_run import assert_one_line_error, write_store_with_bad_rows

# Seven SAEs of seven variants (gradients read by one), trained for 24 steps of 128 tokens
SPECS = [
    "topk:k=4,latents=48",
    "batchtopk:k=4,latents=64",
    "relu:latents=48",
    "gated:latents=48",
    "jumprelu:latents=48",
    "matryoshka:k=4,latents=48,groups=16+32",
    "gsae:k=4,latents=48,beta_eff=0.5",
]
SETTINGS = dict(tokens=24 * 128, batch_size=128, checkpoint_every=4 * 128, seed=3, device="cpu")
# what legitimately differs between two runs of the same SAEs (wall-clock times, the machine)
CONFIG_KEYS = ("format", "format_version", "run", "plan", "calibration")


def request(store, out, groups=None, resume=False, **settings):
    return TrainRequest(
        store=str(store),
        hook=None,
        out=out,
        specs=[parse_spec(text) for text in SPECS],
        settings=TrainSettings(**{**SETTINGS, **settings}),
        resume=resume,
        groups=groups,
    )


def cli_args(store, out, *extra):
    specs = [arg for text in SPECS for arg in ("--sae", text)]
    settings = ["--tokens", SETTINGS["tokens"], "--batch-size", SETTINGS["batch_size"]]
    settings += ["--checkpoint-every", SETTINGS["checkpoint_every"], "--seed", SETTINGS["seed"]]
    return ["train", "--store", store, "--out", out, *specs, *settings, "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("groups") / "store.zarr"
    write_synthetic_store(path, synthetic_spec(4096, holdout_rows=512))
    return path


@pytest.fixture(scope="module")
def reference(store):
    """The run trained by one process."""
    out = store.parent / "one-process"
    train(request(store, out))
    return out


def contents(run):
    """What two runs of the same SAEs must share, file by file: every saved SAE's files and
    every SAE's checkpointed state (bytes), the metrics without timings, the config's identity,
    plan and calibration, the checkpoint's trainer state without the metrics file's length
    (which counts the timings' digits)."""
    files = {
        path: digest
        for path, digest in snapshot(run).items()
        if path.startswith("saes/") or (path.startswith("checkpoints/") and "trainer" not in path)
    }
    metrics = [
        {key: value for key, value in record.items() if key not in TIMING_KEYS}
        for record in read_metrics(run / "metrics.jsonl")
    ]
    config = json.loads((run / "config.json").read_text())
    trainer = Checkpoints(run).load([]).trainer
    trainer.pop("metrics_offset")
    return files, metrics, {key: config[key] for key in CONFIG_KEYS}, trainer


def assert_same_run(run, reference):
    got, expected = contents(run), contents(reference)
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in reference.iterdir())
    assert got[0] == expected[0], "the SAEs and their checkpointed states, byte for byte"
    assert got[1:] == expected[1:]
    assert len(got[1]) == len(SPECS) * 3, "one line per SAE every 10 steps, and at the end"


def test_groups_in_turn_here_give_the_one_process_run(store, reference, tmp_path, run_cli):
    out = tmp_path / "run"
    result = run_cli(*cli_args(store, out, "--groups", "3"))
    assert result.exit_code == 0, result.stderr
    assert f"{len(SPECS)} SAEs in 3 group(s)" in result.stderr
    assert_same_run(out, reference)
    config = json.loads((out / "config.json").read_text())
    groups = config["environment"]["groups"]
    assert sorted(n for g in groups for n in g["saes"]) == sorted(config["calibration"]["saes"])
    assert {g["device"] for g in groups} == {"cpu"}

    again = run_cli(*cli_args(store, out, "--groups", "3", "--resume"))
    assert again.exit_code == 0 and "already complete" in again.stdout, "re-exported"
    assert_same_run(out, reference)


@pytest.mark.slow  # kill -9 of a run in groups, then its resume
def test_an_interrupted_run_in_groups_resumes_here_without_groups(store, reference, tmp_path):
    """kill -9 of a run in groups half-way; `--resume` alone continues its groups here."""
    out = tmp_path / "run"
    killed(150, *cli_args(store, out, "--groups", "3"))  # group 0 (3 SAEs) done, group 1 not
    groups = out / GROUPS_DIR
    assert run_finished(groups / "0") and not run_finished(groups / "1")
    assert Checkpoints(groups / "1").latest() is not None, "group 1 was checkpointed"
    train(request(store, out, resume=True))
    assert not (out / GROUPS_DIR).exists(), "assembled"
    assert_same_run(out, reference)


def killed(kill_at, *args):
    """`sae train ARGS` in a child process that SIGKILLs itself at its `kill_at`-th event."""
    command = child_command(kill_at, "from saekit.cli import main; main(sys.argv[1:])", *args)
    assert subprocess.run(command, capture_output=True).returncode == KILLED


def test_bad_input_is_refused_before_any_worker_starts(store, tmp_path, run_cli, monkeypatch):
    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr("saekit.base.cluster.local_cluster", no_cluster)
    out = tmp_path / "run"
    broken = cli_args(
        store, out, "--cluster", "local:2", "--groups", "2", "--sae", "topk:k=99,latents=48"
    )
    assert_one_line_error(run_cli(*broken), "k=99 is more than latents=48")
    assert_one_line_error(run_cli(*cli_args(store, out, "--cluster", "local:x")), "local:W")
    assert_one_line_error(run_cli(*cli_args(store, out, "--groups", "0")), "--groups must be")
    assert not out.exists(), "nothing written"


@pytest.mark.slow  # kill -9 of a run in groups
def test_a_run_in_groups_is_resumed_as_it_was_split(store, tmp_path, run_cli):
    out = tmp_path / "run"
    killed(2, *cli_args(store, out, "--groups", "2"))  # once the split is recorded
    before = snapshot(out)
    assert_one_line_error(run_cli(*cli_args(store, out, "--groups", "2")), "pass --resume")
    assert_one_line_error(
        run_cli(*cli_args(store, out, "--groups", "3", "--resume")), "split into 2 groups, not 3"
    )
    other = [*cli_args(store, out, "--resume")]
    other[other.index("--seed") + 1] = "4"
    assert_one_line_error(run_cli(*other), "holds a different run", "settings.seed")
    assert snapshot(out) == before


@pytest.mark.slow  # kill -9 of a run
def test_a_run_of_one_process_is_not_continued_in_groups(store, tmp_path, run_cli):
    out = tmp_path / "run"
    killed(len(SPECS) * 2, *cli_args(store, out))
    assert_one_line_error(
        run_cli(*cli_args(store, out, "--groups", "2", "--resume")), "trained in one process"
    )


@pytest.mark.slow  # a run in three groups, failing, then resumed whole
def test_a_failing_group_stops_the_run_in_one_line_and_the_finished_groups_are_kept(
    tmp_path, run_cli
):
    """An Inf gradient: only the g-SAE reads gradients, so only its group (the last) fails."""
    path = tmp_path / "store.zarr"
    write_store_with_bad_rows(path, inf_gradient_rows=[3001])
    out = tmp_path / "run"
    result = run_cli(*cli_args(path, out, "--groups", "3"))
    assert_one_line_error(
        result,
        "NaN or Inf (or a damaged row scale) in store rows 3001",
        during_training=True,
        exit_code=1,
    )
    *finished, failed = json.loads((out / GROUPS_DIR / SPLIT_FILE).read_text())["groups"]
    assert "gsae-k4-beta_eff0.5-48" in failed and finished, "the g-SAE's group runs last here"
    for index, group in enumerate(finished):
        saved = out / GROUPS_DIR / str(index) / "saes"
        assert sorted(p.name for p in saved.iterdir()) == sorted(group), "kept"
    assert not (out / GROUPS_DIR / str(len(finished)) / "saes").exists()
    assert not (out / "saes").exists()
    resumed = run_cli(*cli_args(path, out, "--resume", "--skip-nonfinite"))
    assert resumed.exit_code == 0, resumed.stderr
    assert len(list((out / "saes").iterdir())) == len(SPECS)


# -- on a dask cluster ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of two worker processes (one thread each), as --cluster local:2 starts."""
    with local_cluster(2, TRAIN_RESOURCE) as running:
        yield running


@pytest.mark.slow  # a dask LocalCluster of two worker processes
def test_two_workers_train_the_one_process_run(store, reference, cluster, tmp_path):
    out = tmp_path / "run"
    with Cluster(cluster.scheduler_address, TRAIN_RESOURCE) as running:
        result = train(request(store, out), cluster=running)
    assert list(result.sae_dirs) == [parse_spec(t).resolve(64).name for t in SPECS]
    assert_same_run(out, reference)
    groups = json.loads((out / "config.json").read_text())["environment"]["groups"]
    assert len(groups) == 2


@pytest.mark.slow  # a dask cluster one of whose workers is killed mid-run
def test_a_killed_worker_s_group_resumes_elsewhere_with_the_same_saes(
    store, reference, cluster, tmp_path
):
    from distributed import Client

    out = tmp_path / "run"
    with Client(cluster.scheduler_address) as client:
        victim, pid = next(iter(client.run(os.getpid).items()))
        # half-way through whichever group it trains (3 or 4 SAEs, 24 steps, a checkpoint every
        # 4), SIGKILL; the worker that replaces it is unarmed
        client.run(kill_switch.arm, 40, workers=[victim])
        with Cluster(cluster.scheduler_address, TRAIN_RESOURCE) as running:
            train(request(store, out, groups=2), cluster=running)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert_same_run(out, reference)


class Interrupt(Observer):
    """Ctrl-C at a given step (of the first group, in turn here)."""

    def stepped(self, step: int, epoch: int) -> None:
        if step == 6:
            raise KeyboardInterrupt


def test_a_run_in_groups_is_marked_and_never_written_through_links(store, tmp_path):
    """RUN and each group's directory carry the run marker; a link planted at RUN/groups or at
    a group's directory is refused in one line, and nothing is written where it points."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / GROUPS_DIR).symlink_to(elsewhere)
    with pytest.raises(SaekitError, match="symbolic link"):
        train(request(store, linked, groups=2))
    assert not any(elsewhere.iterdir())

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(request(store, out, groups=2), Interrupt())
    assert marker_kind(out) == RUN and marker_kind(out / GROUPS_DIR / "0") == RUN
    assert not (out / GROUPS_DIR / "1").exists(), "the second group has not started"
    (out / GROUPS_DIR / "1").symlink_to(elsewhere)
    with pytest.raises(SaekitError, match="symbolic link"):
        train(request(store, out, groups=2, resume=True))
    assert not any(elsewhere.iterdir())
    (out / GROUPS_DIR / "1").unlink()
    train(request(store, out, groups=2, resume=True))
    assert marker_kind(out) == RUN and not (out / GROUPS_DIR).exists()

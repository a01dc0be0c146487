"""kill -9 a training run after a checkpoint, resume it: the same SAEs and metrics as a run that
was never interrupted."""

import json
import random
import subprocess
import warnings

import pytest
import torch
from safetensors.torch import load_file

from kill_switch import KILLED, child_command, count_events
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store
from saekit.train import parse_spec
from saekit.train.checkpoint import Checkpoints
from saekit.train.member import Member
from saekit.train.metrics import TIMING_KEYS, read_metrics
from saekit.train.schedule import Plan

SPECS = ["topk:k=8,latents=256", "gsae:k=8,latents=256,beta_eff=0.5"]
SETTINGS = ["--tokens", 400 * 128, "--batch-size", 128, "--checkpoint-every", 20 * 128]


def args(store, out):
    specs = [arg for spec in SPECS for arg in ("--sae", spec)]
    return ["train", "--store", store, "--out", out, *specs, *map(str, SETTINGS)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("resume") / "store.zarr"
    write_synthetic_store(path, synthetic_spec(8192, holdout_rows=1024))
    return path


def run_killed(store, out, resume, kill_at) -> int:
    """Run `sae train` in a child process that SIGKILLs itself at its `kill_at`-th event."""
    code = "from saekit.cli import main; main(sys.argv[1:])"
    command = child_command(kill_at, code, *args(store, out), *(["--resume"] if resume else []))
    return subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode


def outputs(out):
    saes = {d.name: load_file(d / "sae.safetensors") for d in sorted((out / "saes").iterdir())}
    metrics = [
        {k: v for k, v in record.items() if k not in TIMING_KEYS}
        for record in read_metrics(out / "metrics.jsonl")
    ]
    config = json.loads((out / "config.json").read_text())
    return saes, metrics, {k: config[k] for k in ("run", "plan", "calibration")}


@pytest.mark.slow  # kill -9 of `sae train` child processes at random points, then resumes
def test_resume_after_kill_gives_the_uninterrupted_result(store, tmp_path, run_cli):
    reference = tmp_path / "reference"
    with count_events() as events:
        assert run_cli(*args(store, reference)).exit_code == 0
    steps_per_checkpoint = 2 * 20  # two SAEs, a checkpoint every 20 batches

    out, rng = tmp_path / "killed", random.Random(0)
    for resume in (False, True):  # kill the first run, then the resumed one
        # past the run's (or the resumed run's) first checkpoint, within the first third of
        # the events of a whole run: always killed after a checkpoint, before the end
        kill_at = rng.randint(2 * steps_per_checkpoint, len(events) // 3)
        assert run_killed(store, out, resume, kill_at) == KILLED
    assert not Checkpoints(out).latest()["complete"]
    assert run_cli(*args(store, out), "--resume").exit_code == 0

    saes, metrics, config = outputs(out)
    expected_saes, expected_metrics, expected_config = outputs(reference)
    assert config == expected_config
    assert metrics == expected_metrics and len(metrics) == 2 * 40
    assert saes.keys() == expected_saes.keys()
    for name, tensors in saes.items():
        for key, value in tensors.items():
            assert torch.equal(value, expected_saes[name][key]), f"{name}.{key}"


def test_a_checkpoint_loads_to_the_cpu_and_each_state_moves_where_it_belongs(tmp_path):
    """Checkpoints load on the CPU; restoring moves the SAE, Adam's moments, the usage and the
    metric sums to the member's device and leaves Adam's step counts on the CPU (where torch
    keeps them; on a GPU they would cost a host sync every step). The meta device stands in for
    a GPU here: placement is what is checked, not arithmetic."""
    spec = parse_spec("topk:k=4,latents=64").resolve(16)
    plan = Plan.make(tokens=64, batch_size=32, train_rows=1000, warmup=0.0, decay=0.0)

    def member(device: str) -> Member:
        return Member(spec, spec.build(16).to(device), plan, grad_clip=1.0)

    trained = member("cpu")
    trained.step(torch.randn(32, 16), None, step=0)
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save(1, {"step": 1}, {spec.name: trained.state_dict()})
    loaded = checkpoints.load([spec.name])
    state = loaded.members[spec.name]

    def devices(tree) -> set[str]:
        if isinstance(tree, torch.Tensor):
            return {tree.device.type}
        items = tree.values() if isinstance(tree, dict) else tree
        return set().union(
            *(devices(v) for v in items if isinstance(v, dict | list | torch.Tensor))
        )

    assert devices(state) == {"cpu"}

    restored = member("meta")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # copying values into meta tensors: no-op
        restored.load_state_dict(state)
    adam = restored.optimizer.state
    assert {p.device.type for p in restored.sae.parameters()} == {"meta"}
    assert {s["exp_avg"].device.type for s in adam.values()} == {"meta"}
    assert {s["exp_avg_sq"].device.type for s in adam.values()} == {"meta"}
    assert {s["step"].device.type for s in adam.values()} == {"cpu"}
    assert restored.usage.density_F.device.type == "meta"
    assert restored.usage.tokens_since_fired_F.device.type == "meta"
    assert {t.device.type for t in restored._sums.values()} == {"meta"}

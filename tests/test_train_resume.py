"""kill -9 a training run after a checkpoint, resume it: the same SAEs and metrics as a run that
was never interrupted."""

import json
import random
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from kill_switch import KILLED, child_command, count_events
from saekit.synthetic import synthetic_spec, write_synthetic_store
from saekit.train.checkpoint import Checkpoints
from saekit.train.metrics import TIMING_KEYS, read_metrics

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

"""The GPU check (benchmarks/gpu_check.py) runs end to end on a CPU at toy sizes, so that the
script is ready, and correct, on the day a GPU is lent."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # benchmarks/gpu_check.py end to end in a child process

REPO = Path(__file__).resolve().parent.parent
STEPS = [
    "build model",
    "load model",
    "bare forward+backward",
    "harvest",
    "train 4 SAEs in one pass",
    "eval online",
    "train in 2 groups, LocalCluster of 2 workers",
    "sharded harvest, LocalCluster of 2 workers",
    "loader benchmark",
]


def test_the_gpu_check_runs_end_to_end_on_a_cpu(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    summary = json.loads((out / "summary.json").read_text())
    sizes, steps = summary["sizes"], summary["steps"]
    assert summary["device"] == "cpu" and list(steps) == STEPS, "no cuda tests without a GPU"
    assert {name: step["status"] for name, step in steps.items()} == dict.fromkeys(STEPS, "ok")
    assert steps["harvest"]["tokens"] == sizes["harvest_tokens"] + sizes["eval_tokens"]
    assert steps["harvest"]["tokens_per_s"] > 0 and steps["harvest"]["ratio_to_bare"] > 0
    train = steps["train 4 SAEs in one pass"]
    assert train["saes"] == 4 and train["rows_per_s"] > 0
    assert 0 <= train["waiting_on_loader"] < 1
    assert all(math.isfinite(nmse) for nmse in train["final_nmse"].values())
    loss_added = steps["eval online"]["loss_added"]
    assert len(loss_added) == 7, "topk, gsae grad/plain, batchtopk and fc threshold/batch"
    assert all(math.isfinite(value) for value in loss_added.values())
    groups = steps["train in 2 groups, LocalCluster of 2 workers"]
    assert groups["saes_equal_to_one_process"] == 4, "the grouped SAEs are the one-process ones"
    sharded = steps["sharded harvest, LocalCluster of 2 workers"]
    assert sharded["tokens"] == sizes["shard_tokens"] and sharded["worker_gpus"] == [None, None]
    loader = (out / "bench_store.txt").read_text()
    for measurement in ("(a) raw whole-chunk reads", "(b) loader, encoded batches"):
        assert loader.count(measurement) == 2, "activations, and activations + gradients"
    table = (out / "summary.md").read_text()
    assert all(f"| {name} | ok |" in table for name in STEPS)

"""Wall time of one `sae train` run of several SAEs in one process against the same run in
groups on a dask LocalCluster (`--groups N --cluster local:N`), side by side, and whether the
SAEs are bit for bit the same.

Run:  .venv/bin/python benchmarks/bench_groups.py [--d 256] [--latents 2048] [--tokens 262144]
      [--workers 2] [--repeats 2] [--dir /tmp]

A synthetic store with gradients (one hook of width d) is written once; seven SAEs of six variants
(TopK at two L0s, BatchTopK, Feature Choice, g-SAE, ReLU + L1, JumpReLU) are trained on it with
`python -m saekit train` in a child process, alternately in one process and in groups, `--repeats`
times each; the best and median wall times (including the cluster's start-up) are printed with
their ratio. On a machine with one device per worker the ratio approaches the number of workers
when training, not reading, dominates; on 2 CPU cores the two workers share the cores the one
process had, so it measures the overhead of the split more than any gain.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from saekit.cache_format import HookSpec
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store

HOOK = "blocks.0.hook_resid_post"
VARIANTS = (
    "topk:k=32,",
    "topk:k=16,",
    "batchtopk:k=32,",
    "feature-choice:k=32,",
    "gsae:k=32,",
    "relu:",
    "jumprelu:",
)  # fmt: skip  (each SAE's spec is this + latents=F)


def train(store: Path, out: Path, latents: int, tokens: int, groups: int | None) -> float:
    """Seconds of one `sae train` child process (the run directory is removed first)."""
    shutil.rmtree(out, ignore_errors=True)
    specs = [arg for variant in VARIANTS for arg in ("--sae", f"{variant}latents={latents}")]
    command = [
        sys.executable, "-m", "saekit", "train", "--store", str(store), "--out", str(out),
        *specs, "--tokens", str(tokens), "--batch-size", "1024", "--device", "cpu",
        "--checkpoint-every", "0",
    ]  # fmt: skip
    if groups is not None:
        command += ["--groups", str(groups), "--cluster", f"local:{groups}"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stderr.strip().splitlines()[-1])
    return time.perf_counter() - started


def same_saes(one: Path, grouped: Path) -> bool:
    return all(
        (sae / "sae.safetensors").read_bytes()
        == (grouped / "saes" / sae.name / "sae.safetensors").read_bytes()
        for sae in (one / "saes").iterdir()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--latents", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=262_144)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-groups-", dir=args.dir))
    try:
        store = work / "store.zarr"
        rows = args.tokens // 2 + 16384
        spec = synthetic_spec(rows, holdout_rows=16384, hooks={HOOK: HookSpec(d=args.d)})
        write_synthetic_store(store, spec)
        times: dict[str, list[float]] = {"one process": [], f"{args.workers} groups": []}
        for _ in range(args.repeats):
            times["one process"].append(train(store, work / "one", args.latents, args.tokens, None))
            times[f"{args.workers} groups"].append(
                train(store, work / "grouped", args.latents, args.tokens, args.workers)
            )
        print(f"{len(VARIANTS)} SAEs, d {args.d}, {args.latents} latents, {args.tokens:,} tokens")
        for name, seconds in times.items():
            median = statistics.median(seconds)
            print(f"{name:>12}: best {min(seconds):6.1f} s, median {median:6.1f} s")
        one, grouped = times.values()
        print(
            f"one process / groups: best {min(one) / min(grouped):.2f}, median "
            f"{statistics.median(one) / statistics.median(grouped):.2f}"
        )
        print(f"SAEs bit for bit equal: {same_saes(work / 'one', work / 'grouped')}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

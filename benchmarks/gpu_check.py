"""Check saekit's whole GPU path in one command, and measure it.

On a GPU machine (under 8 minutes on one H200 with 16 cores):
    .venv/bin/python benchmarks/gpu_check.py --out gpu-check
On a CPU, at toy sizes (under 3 minutes; the test suite runs this, so the script cannot rot):
    .venv/bin/python benchmarks/gpu_check.py --device cpu --out /tmp/gpu-check

Steps, each timed with the device synchronised, with its peak GPU memory:
1. the tests marked `cuda` (pytest -m cuda), on a GPU;
2. a harvest with gradients of a GPT-2-small-shaped model (random weights, GPT-2's vocabulary
   size, a BPE tokenizer trained on generated text: nothing is downloaded), against the bare
   forward + backward of the same model on the same batches;
3. `sae train` of TopK, g-SAE, BatchTopK and Feature Choice in one pass over that store: rows/s
   and the fraction of the time the trainer's thread was blocked waiting for the loader;
4. `sae eval` online on a few batches of held-out contexts, then the multi-device form of step
   3: the same SAEs in 2 groups on a LocalCluster of 2 workers (`sae train --groups 2 --cluster
   local:2`, one GPU each; left out with a single GPU), checked bit for bit against step 3's;
5. a sharded harvest on a LocalCluster of 2 workers (`--cluster local:2`), each worker seeing
   its own GPU where there are two;
6. the loader benchmark (`bench_store.py`, one round): raw reads against encoded batches copied
   and decoded on the device, float32 batches and N no-op SAEs, float16 and float8 stores
   (its table in OUT/bench_store.txt).
Writes OUT/summary.json (every figure) and OUT/summary.md (the table for docs/benchmarks.md)
after every step, so a run cut short still leaves what it measured. Exit code 1 if a step failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bench_harvest import bare_rate
from common import synchronize
from saekit.base.devices import resolve_device

HOOK = "blocks.{layer}.hook_resid_post"
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Sizes:
    layers: int
    d: int
    heads: int
    vocab: int  # the model's; the tokenizer's own vocabulary is smaller
    positions: int  # the model's context
    documents: int  # of generated text
    context: int
    harvest_batch: int  # contexts
    harvest_tokens: int
    latents: int
    k: int
    train_batch: int  # tokens
    train_tokens: int
    eval_tokens: int
    eval_batch: int  # contexts
    shard_tokens: int
    loader_rows: int  # of bench_store's synthetic stores
    loader_d: int


GPU = Sizes(
    layers=12, d=768, heads=12, vocab=50257, positions=1024, documents=20000, context=128,
    harvest_batch=64, harvest_tokens=524_288, latents=16384, k=32, train_batch=4096,
    train_tokens=1_048_576, eval_tokens=16384, eval_batch=16, shard_tokens=65536,
    loader_rows=262_144, loader_d=768,
)  # fmt: skip
CPU = Sizes(
    layers=2, d=64, heads=4, vocab=512, positions=64, documents=300, context=64,
    harvest_batch=16, harvest_tokens=8192, latents=256, k=8, train_batch=512,
    train_tokens=4096, eval_tokens=1024, eval_batch=8, shard_tokens=4096,
    loader_rows=16384, loader_d=64,
)  # fmt: skip


class Check:
    """The steps of one check and their figures, written to OUT after every step."""

    def __init__(self, out: Path, device: torch.device, sizes: Sizes) -> None:
        self.out, self.device = out, device
        self.summary: dict[str, Any] = {
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "gpus": torch.cuda.device_count(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "host": platform.node(),
            "sizes": asdict(sizes),
            "steps": {},
        }
        self.failed = False

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        """Time the block (device synchronised) and record what it puts in the yielded dict;
        an exception is recorded as the step's error and the check goes on."""
        figures: dict[str, Any] = {}
        print(f"[{name}] ...", flush=True)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        synchronize(self.device)
        started = time.perf_counter()
        try:
            yield figures
            figures["status"] = "ok"
        except Exception as error:  # a check reports every failure and carries on
            figures["status"] = f"failed: {type(error).__name__}: {error}"
            figures["traceback"] = traceback.format_exc()
            self.failed = True
        synchronize(self.device)
        figures["seconds"] = round(time.perf_counter() - started, 2)
        if self.device.type == "cuda" and "peak_gpu_memory_gb" not in figures:
            figures["peak_gpu_memory_gb"] = round(
                torch.cuda.max_memory_allocated(self.device) / 1e9, 2
            )
        self.summary["steps"][name] = figures
        print(f"[{name}] {json.dumps({k: v for k, v in figures.items() if k != 'traceback'})}")
        self.write()

    def ok(self, name: str) -> bool:
        return self.summary["steps"].get(name, {}).get("status") == "ok"

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=2) + "\n")
        (self.out / "summary.md").write_text(markdown(self.summary))


def markdown(summary: dict[str, Any]) -> str:
    """The summary as the table recorded in docs/benchmarks.md."""
    lines = [
        f"device {summary['device']} ({summary['gpu'] or 'CPU'}), {summary['gpus']} GPU(s), "
        f"{summary['cpus']} CPUs, torch {summary['torch']}, "
        f"{summary.get('total_seconds', '?')} s in all",
        "",
        "| step | status | seconds | peak GPU memory (GB) | figures |",
        "|---|---|---|---|---|",
    ]
    for name, step in summary["steps"].items():
        figures = ", ".join(
            f"{k} {v:,}" if isinstance(v, int | float) else f"{k} {v}"
            for k, v in step.items()
            if k not in ("status", "seconds", "peak_gpu_memory_gb", "traceback")
        )
        status = step["status"] if step["status"] == "ok" else step["status"].splitlines()[0]
        memory = step.get("peak_gpu_memory_gb", "n/a")
        lines.append(f"| {name} | {status} | {step['seconds']} | {memory} | {figures} |")
    return "\n".join(lines) + "\n"


def cuda_tests(figures: dict[str, Any]) -> None:
    """Every test marked `cuda`, in a child pytest (only their files are collected: the others
    may need test-only packages that a GPU machine lacks)."""
    figures["peak_gpu_memory_gb"] = "n/a (child process)"
    files = sorted(
        str(path.relative_to(REPO))
        for path in (REPO / "tests").glob("test_*.py")
        if "pytest.mark.cuda" in path.read_text()
    )
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *files]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    figures["result"] = (result.stdout.strip().splitlines() or ["no output"])[-1]
    if result.returncode != 0:
        raise RuntimeError(f"cuda tests failed: {figures['result']}\n{result.stdout[-4000:]}")


def build_model(directory: Path, corpus: Path, sizes: Sizes) -> None:
    """A GPT-2 of the given shape with random weights, and a BPE tokenizer trained on the
    corpus (its ids are a subset of the model's vocabulary)."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    from saekit.demo import build_tiny_lm

    texts = corpus.read_text().split("\n\n")
    build_tiny_lm(directory, texts, vocab_size=min(sizes.vocab, 4096), n_positions=sizes.context)
    tokenizer = GPT2TokenizerFast.from_pretrained(directory)
    config = GPT2Config(
        vocab_size=sizes.vocab,
        n_layer=sizes.layers,
        n_embd=sizes.d,
        n_head=sizes.heads,
        n_positions=sizes.positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(directory)


def harvest_step(
    check: Check, work: Path, model: Path, corpus: Path, sizes: Sizes, hook: str
) -> Path | None:
    """Bare forward + backward, then the harvest of the same model; the store, if any."""
    from saekit.harvest import HarvestConfig, plan_harvest, run_harvest
    from saekit.harvest.contexts import Packing, context_stream

    holdout = sizes.eval_tokens
    config = HarvestConfig(
        model=str(model),
        dataset=str(corpus),
        hooks=(hook,),
        out=str(work / "store.zarr"),
        tokens=sizes.harvest_tokens + holdout,
        holdout_tokens=holdout,
        context_size=sizes.context,
        batch_size=sizes.harvest_batch,
        device=str(check.device),
    )
    with check.step("load model") as figures:
        plan = plan_harvest(config)
    if not check.ok("load model"):
        return None
    with check.step("bare forward+backward") as figures:
        contexts = context_stream(
            plan.source.documents(),
            plan.model.tokenizer,
            Packing.for_tokenizer(plan.model.tokenizer, sizes.context),
            holdout=0,
        )
        batches = [
            torch.stack([torch.from_numpy(next(contexts)) for _ in range(sizes.harvest_batch)])
            for _ in range(8)
        ]
        bare = bare_rate(plan.model.bridge, [b.to(check.device) for b in batches], hook)
        figures["tokens_per_s"] = round(bare)
    with check.step("harvest") as figures:
        started = time.perf_counter()
        result = run_harvest(plan)
        synchronize(check.device)
        rate = result.rows / (time.perf_counter() - started)
        figures.update(tokens=result.rows, tokens_per_s=round(rate))
        if check.ok("bare forward+backward"):
            figures["ratio_to_bare"] = round(rate / bare, 2)
    return work / "store.zarr"


def train_step(check: Check, work: Path, store: Path, sizes: Sizes) -> Path:
    from saekit.train import TrainRequest, TrainSettings, parse_spec, train
    from saekit.train.metrics import read_metrics

    specs = train_specs(sizes)
    settings = TrainSettings(
        tokens=sizes.train_tokens,
        batch_size=sizes.train_batch,
        device=str(check.device),
        checkpoint_every=0,
        log_every=50,
    )
    request = TrainRequest(str(store), None, work / "run", [parse_spec(s) for s in specs], settings)
    with check.step("train 4 SAEs in one pass") as figures:
        result = train(request)
        # the trainer's own clock, synchronised at each metrics line; the first interval
        # (warm-up: allocations, kernel selection) is left out when there are others
        first_sae = min(result.final_metrics)
        laps = [r for r in read_metrics(result.run_dir / "metrics.jsonl") if r["sae"] == first_sae]
        steady = laps[1:] or laps
        figures["saes"] = len(specs)
        figures["rows_per_s"] = round(statistics.mean(r["tokens_per_s"] for r in steady))
        figures["waiting_on_loader"] = round(
            statistics.mean(r["data_wait_fraction"] for r in steady), 3
        )
        figures["final_nmse"] = {n: round(m["nmse"], 3) for n, m in result.final_metrics.items()}
    return work / "run"


def train_specs(sizes: Sizes) -> list[str]:
    """The SAEs the training checks train: four variants, one of them reading gradients."""
    return [
        f"{variant}:k={sizes.k},latents={sizes.latents}"
        for variant in ("topk", "gsae", "batchtopk", "feature-choice")
    ]


def groups_step(check: Check, work: Path, store: Path, run: Path, sizes: Sizes) -> None:
    """The multi-device form of the training check: the same SAEs split into 2 groups on a
    LocalCluster of 2 workers (one GPU each; CPU workers in CPU mode), bit for bit the SAEs of
    the one-process run. Left out on a machine with one GPU."""
    gpus = torch.cuda.device_count() if check.device.type == "cuda" else 0
    if check.device.type == "cuda" and gpus < 2:
        return
    out = work / "run-groups"
    command = [
        sys.executable, "-m", "saekit", "train", "--store", str(store), "--out", str(out),
        *(arg for spec in train_specs(sizes) for arg in ("--sae", spec)),
        "--tokens", str(sizes.train_tokens), "--batch-size", str(sizes.train_batch),
        "--checkpoint-every", "0", "--device", "auto" if gpus else "cpu",
        "--groups", "2", "--cluster", "local:2",
    ]  # fmt: skip
    with check.step("train in 2 groups, LocalCluster of 2 workers") as figures:
        figures["peak_gpu_memory_gb"] = "n/a (worker processes)"
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        figures["seconds_with_startup"] = round(time.perf_counter() - started, 1)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip().splitlines()[-1])
        differing = [
            sae.name
            for sae in sorted((run / "saes").iterdir())
            if (sae / "sae.safetensors").read_bytes()
            != (out / "saes" / sae.name / "sae.safetensors").read_bytes()
        ]
        if differing:
            raise RuntimeError(f"SAEs differ from the one-process run's: {', '.join(differing)}")
        figures["saes_equal_to_one_process"] = len(list((run / "saes").iterdir()))


def eval_step(check: Check, work: Path, run: Path, sizes: Sizes) -> None:
    from saekit.evaluate import EvalRequest, evaluate

    request = EvalRequest(
        runs=(str(run),),
        out=str(work / "report"),
        tokens=sizes.eval_tokens,
        batch_size=sizes.eval_batch,
        device=str(check.device),
    )
    with check.step("eval online") as figures:
        started = time.perf_counter()
        evaluate(request)
        synchronize(check.device)
        seconds = time.perf_counter() - started
        report = json.loads((work / "report" / "report.json").read_text())
        figures["held_out_tokens_per_s"] = round(sizes.eval_tokens / seconds)
        figures["loss_added"] = {
            row["label"]: round(row["online"]["loss_added"], 4) for row in report["rows"]
        }


def sharded_step(
    check: Check, work: Path, model: Path, corpus: Path, sizes: Sizes, hook: str
) -> None:
    from saekit.base.cluster import gpu_assignments
    from saekit.cache_format import ActivationStore

    out = work / "sharded.zarr"
    command = [
        sys.executable, "-m", "saekit", "harvest", "--model", str(model), "--dataset",
        str(corpus), "--hook", hook, "--tokens", str(sizes.shard_tokens), "--holdout-tokens",
        str(sizes.shard_tokens // 8), "--context-size", str(sizes.context), "--batch-size",
        str(sizes.harvest_batch), "--device", "auto" if check.device.type == "cuda" else "cpu",
        "--shards", "2", "--cluster", "local:2", "--out", str(out),
    ]  # fmt: skip
    with check.step("sharded harvest, LocalCluster of 2 workers") as figures:
        gpus = torch.cuda.device_count() if check.device.type == "cuda" else 0
        figures["worker_gpus"] = gpu_assignments(2, os.environ, gpus)
        figures["peak_gpu_memory_gb"] = "n/a (worker processes)"
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip().splitlines()[-1])
        store = ActivationStore.open(out)
        if not store.complete:
            raise RuntimeError("the sharded store is not complete")
        figures["tokens"] = store.n_rows_committed
        figures["tokens_per_s_with_startup"] = round(store.n_rows_committed / seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    sizes = GPU if device.type == "cuda" else CPU
    check = Check(args.out, device, sizes)
    work = args.work or Path(tempfile.mkdtemp(prefix="saekit-gpu-check-"))
    hook = HOOK.format(layer=sizes.layers // 2 + (1 if sizes.layers > 2 else 0))
    started = time.perf_counter()
    try:
        run_steps(check, work, sizes, hook)
    finally:
        check.summary["total_seconds"] = round(time.perf_counter() - started, 1)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    check.write()
    print(f"summary: {args.out / 'summary.json'} and {args.out / 'summary.md'}")
    sys.exit(1 if check.failed else 0)


def run_steps(check: Check, work: Path, sizes: Sizes, hook: str) -> None:
    from saekit.demo import write_corpus

    if check.device.type == "cuda":
        with check.step("cuda tests") as figures:
            cuda_tests(figures)
    corpus = write_corpus(work / "corpus.txt", sizes.documents, seed=0)
    with check.step("build model") as figures:
        build_model(work / "model", corpus, sizes)
        figures["parameters_m"] = model_parameters(work / "model")
    if not check.ok("build model"):
        return
    store = harvest_step(check, work, work / "model", corpus, sizes, hook)
    if store is not None and check.ok("harvest"):
        run = train_step(check, work, store, sizes)
        if check.ok("train 4 SAEs in one pass"):
            eval_step(check, work, run, sizes)
            groups_step(check, work, store, run, sizes)
    sharded_step(check, work, work / "model", corpus, sizes, hook)
    loader_step(check, work, sizes)


def loader_step(check: Check, work: Path, sizes: Sizes) -> None:
    """benchmarks/bench_store.py on this device (one round): raw reads against the loader's
    encoded and float32 batches and N no-op SAEs, float16 and float8 stores; its table is
    written to OUT/bench_store.txt."""
    command = [
        sys.executable, str(REPO / "benchmarks" / "bench_store.py"), "--device", str(check.device),
        "--rows", str(sizes.loader_rows), "--d", str(sizes.loader_d), "--repeats", "1",
        "--dir", str(work),
    ]  # fmt: skip
    with check.step("loader benchmark") as figures:
        figures["peak_gpu_memory_gb"] = "n/a (child process)"
        result = subprocess.run(command, capture_output=True, text=True)
        (check.out / "bench_store.txt").write_text(result.stdout + result.stderr)
        figures["table"] = "bench_store.txt"
        if result.returncode != 0:
            raise RuntimeError(f"bench_store.py failed:\n{result.stderr[-4000:]}")


def model_parameters(directory: Path) -> float:
    """Millions of parameters of a saved model."""
    from safetensors import safe_open

    with safe_open(directory / "model.safetensors", "pt") as weights:
        shapes = [weights.get_slice(name).get_shape() for name in weights.keys()]  # noqa: SIM118
    return round(sum(math.prod(shape) for shape in shapes) / 1e6, 1)


if __name__ == "__main__":
    main()

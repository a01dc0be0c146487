"""Training throughput: tokens/s per variant, store vs RAM, N SAEs per pass, SAELens, sparsify.

Run (GPT-2-small shape; minutes on a GPU, tens of minutes on a CPU):
    .venv/bin/python benchmarks/bench_train.py
Reduced, to check that it works:
    .venv/bin/python benchmarks/bench_train.py --d 128 --latents 2048 --batch-size 1024 \\
        --steps 4 --rows 32768

Every figure comes from one run on one machine, printed side by side:
- tokens/s of each variant (k = --k, F = --latents), trained from the store: the trainer's
  per-batch work (scale the batch, one optimiser step per SAE) on batches of the ShuffledLoader;
- training from the store vs from the same batches already in RAM (TopK and g-SAE);
- N TopK SAEs trained on each batch vs N separate runs over the store;
- TopK tokens/s of saekit vs SAELens and sparsify (PyPI `sae-lens`, `eai-sparsify`), each
  run in its own virtualenv on the same shapes from RAM; a library that does not install is
  skipped with a message. Existing environments: --saelens-python, --sparsify-python.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

import saekit.train.sparse as sparse_module
from common import synchronize
from saekit.base.devices import resolve_device
from saekit.cache_format import (
    ActivationStore,
    Batch,
    EncodedBatch,
    HookSpec,
    LoaderThreads,
    ShuffledLoader,
)
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store
from saekit.train.calibration import input_scale
from saekit.train.member import Member
from saekit.train.schedule import Plan
from saekit.train.spec import parse_spec

HOOK = "blocks.7.hook_resid_post"
VARIANTS = {  # spec keys besides latents and name
    "topk": "k={k}",
    "batchtopk": "k={k}",
    "feature-choice": "k={k}",
    "gsae": "k={k},beta_eff=1",
    "relu": "l1=5",
    "gated": "l1=5",
    "jumprelu": "l0=1",
}
TORCH_SPEC = "torch==2.13.0"

# The same TopK training step in each library: build the SAE, Adam, `steps` timed steps on
# random batches held in RAM after `warmup` untimed ones. Prints tokens/s as JSON last.
SAELENS_STEP = """
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=F, k=K, device=DEVICE))
def step(x, i):
    out = sae.training_forward_pass(TrainStepInput(
        sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=i,
        is_logging_step=False))
    out.loss.backward()
"""
SPARSIFY_STEP = """
from sparsify import SparseCoder, SparseCoderConfig
sae = SparseCoder(D, SparseCoderConfig(num_latents=F, k=K), device=DEVICE)
def step(x, i):
    out = sae(x, dead_mask=dead)
    (out.fvu + out.auxk_loss).backward()
    sae.remove_gradient_parallel_to_decoder_directions()
"""
HARNESS = """
import json, sys, time, torch
D, F, K, B, STEPS, WARMUP, DEVICE = {d}, {latents}, {k}, {batch}, {steps}, {warmup}, "{device}"
torch.manual_seed(0)
{step}
dead = torch.zeros(F, dtype=torch.bool, device=DEVICE)
optimizer = torch.optim.Adam(sae.parameters(), lr=2e-4)
batches = [torch.randn(B, D, device=DEVICE) for _ in range(4)]
def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()
for i in range(WARMUP + STEPS):
    if i == WARMUP:
        sync(); started = time.perf_counter()
    step(batches[i % 4], i)
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
sync()
print(json.dumps({{"tokens_per_s": STEPS * B / (time.perf_counter() - started)}}))
"""


def make_members(texts: list[str], d: int, plan: Plan, x_BD, g_BD, device) -> list[Member]:
    """Initialised SAEs (b_dec = the sample mean here) ready to step, on `device`."""
    members = []
    for i, text in enumerate(texts):
        spec = parse_spec(text).resolve(d)
        sae = spec.build(d).to(device)
        sae.init_weights_(torch.Generator().manual_seed(i), 1.0, x_BD.mean(0).cpu())
        sae.activation.calibrate_(sae, x_BD, g_BD)
        members.append(Member(spec, sae, plan, grad_clip=1.0))
    return members


def tokens_per_second(
    members: list[Member],
    batches: Iterable[Batch | EncodedBatch],
    steps: int,
    warmup: int,
    scale: float,
) -> float:
    """The trainer's per-batch work for `steps` timed batches after `warmup` untimed ones."""
    needs_gradients = any(m.needs_gradients for m in members)
    device = members[0].sae.W_enc.device
    batch_size = 0
    for i, batch in enumerate(batches):
        if i == warmup:
            synchronize(device)
            started = time.perf_counter()
        if i == warmup + steps:
            break
        batch = batch.on(device)
        x_BD = batch["activations"] * scale
        g_BD = batch["gradients"] / scale if needs_gradients else None
        batch_size = len(x_BD)
        for member in members:
            member.step(x_BD, g_BD, i)
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - started)


class Bench:
    """Shared state of one benchmark run: the store, its scale and a calibration sample."""

    def __init__(self, args: argparse.Namespace, store: ActivationStore, device) -> None:
        self.args, self.store, self.device = args, store, device
        self.plan = Plan.make(10**9, args.batch_size, store.n_rows("train"), 0.0, 0.0)
        sample = next(iter(self.loader(("activations", "gradients"), epochs=1))).on(device)
        self.scale = input_scale(sample["activations"])
        self.x_BD = (sample["activations"] * self.scale).to(device)
        self.g_BD = (sample["gradients"] / self.scale).to(device)

    def loader(self, fields=("activations", "gradients"), epochs=None) -> ShuffledLoader:
        return ShuffledLoader(
            self.store,
            hook=HOOK,
            fields=fields,
            batch_size=self.args.batch_size,
            epochs=epochs,
            encoded=self.device.type != "cpu",  # as `sae train` does
            pin_device=self.device if self.device.type == "cuda" else None,
            threads=LoaderThreads.for_machine(self.store.location, self.device),
        )

    def specs(self, *variants: str) -> list[str]:
        keys = {v: VARIANTS[v].format(k=self.args.k) for v in variants}
        return [
            f"{v}:{keys[v]},latents={self.args.latents},name={v}-{i}"
            for i, v in enumerate(variants)
        ]

    def rate(self, texts: list[str], batches: Callable[[], Iterable[Batch]]) -> float:
        members = make_members(texts, self.args.d, self.plan, self.x_BD, self.g_BD, self.device)
        return tokens_per_second(members, batches(), self.args.steps, 1, self.scale)

    def from_store(self, texts: list[str]) -> float:
        needs_gradients = any("gsae" in t for t in texts)
        fields = ("activations", "gradients") if needs_gradients else ("activations",)
        return self.rate(texts, lambda: iter(self.loader(fields)))

    def in_ram(self, texts: list[str]) -> float:
        loader = self.loader()
        batches = [
            b.on(self.device) for _, b in zip(range(self.args.steps + 1), loader, strict=False)
        ]
        return self.rate(texts, lambda: iter(batches))


def external_rate(python: Path | None, step: str, args, device, repeats: int) -> str | float:
    """Best tokens/s of the TopK step of another library in its own Python over `repeats` runs,
    or why it was skipped."""
    if python is None:
        return "not installed"
    rates = [_external_run(python, step, args, device) for _ in range(repeats)]
    numbers = [rate for rate in rates if isinstance(rate, float)]
    return max(numbers) if numbers else rates[0]


def _external_run(python: Path, step: str, args, device) -> str | float:
    script = HARNESS.format(
        d=args.d,
        latents=args.latents,
        k=args.k,
        batch=args.batch_size,
        steps=args.steps,
        warmup=1,
        device=device.type,
        step=textwrap.dedent(step),
    )
    result = subprocess.run([python, "-c", script], capture_output=True, text=True)
    if result.returncode != 0:
        return "failed: " + (result.stderr.strip().splitlines() or ["?"])[-1][:120]
    return json.loads(result.stdout.strip().splitlines()[-1])["tokens_per_s"]


def library_python(given: Path | None, venv: Path, package: str, install: bool) -> Path | None:
    """A Python that imports `package`: the given one, else a virtualenv made for it."""
    if given is not None:
        return given
    python = venv / "bin" / "python"
    if python.exists():
        return python
    if not install:
        return None
    print(f"installing {package} into {venv} (once) ...", flush=True)
    steps = [
        ["python3", "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", TORCH_SPEC],
        [str(python), "-m", "pip", "install", "--quiet", package],
    ]
    for command in steps:
        if subprocess.run(command, capture_output=True).returncode != 0:
            print(f"  {package} did not install; skipping it")
            shutil.rmtree(venv, ignore_errors=True)
            return None
    return python


def best_of(repeats: int, *measures: Callable[[], float]) -> list[float]:
    """The highest value of each measure over `repeats` rounds that alternate between them (so
    a burst of load from elsewhere on the machine hits every measure alike)."""
    rounds = [[measure() for measure in measures] for _ in range(repeats)]
    return [max(values) for values in zip(*rounds, strict=True)]


@contextlib.contextmanager
def dense_products() -> Iterator[None]:
    """Train selection-based SAEs with dense products, for comparison."""
    saved, sparse_module.SPARSE_MAX_DENSITY = sparse_module.SPARSE_MAX_DENSITY, 0.0
    try:
        yield
    finally:
        sparse_module.SPARSE_MAX_DENSITY = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--latents", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--rows", type=int, default=1 << 18, help="rows of the store")
    parser.add_argument("--n-saes", type=int, default=3, help="SAEs per pass to compare")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the comparisons")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--saelens-python", type=Path)
    parser.add_argument("--sparsify-python", type=Path)
    parser.add_argument("--no-install", action="store_true", help="skip missing libraries")
    args = parser.parse_args()
    device = resolve_device(args.device)
    path = args.dir / "saekit-bench-train.zarr"
    shutil.rmtree(path, ignore_errors=True)
    try:
        hooks = {HOOK: HookSpec(d=args.d)}
        write_synthetic_store(
            path,
            synthetic_spec(args.rows, hooks=hooks, context_size=128, rows_per_chunk=8192),
        )
        bench = Bench(args, ActivationStore.open(path), device)
        print(
            f"d={args.d} latents={args.latents} k={args.k} batch={args.batch_size} "
            f"steps={args.steps} device={device} threads={torch.get_num_threads()}"
        )
        print("\ntokens/s per variant, trained from the store")
        rates = {}
        for variant in args.variants.split(","):
            rates[variant] = bench.from_store(bench.specs(variant))
            print(f"  {variant:16s} {rates[variant]:10,.0f}")

        repeats = args.repeats
        print(f"\nfrom the store vs the same batches in RAM (best of {repeats}, alternated)")
        for variant in ("topk", "gsae"):
            specs = bench.specs(variant)
            store, ram = best_of(
                repeats, lambda s=specs: bench.from_store(s), lambda s=specs: bench.in_ram(s)
            )
            print(f"  {variant:9s} store {store:10,.0f}  RAM {ram:10,.0f}  ratio {store / ram:.2f}")

        n = args.n_saes
        print(f"\n{n} TopK SAEs per pass vs {n} separate runs (from the store, best of {repeats})")
        together, single = best_of(
            repeats,
            lambda: bench.from_store(bench.specs(*["topk"] * n)),
            lambda: bench.from_store(bench.specs("topk")),
        )
        print(
            f"  one pass: {together:,.0f} tokens/s for {n} SAEs; one SAE: {single:,.0f} tokens/s; "
            f"time of the pass / time of {n} runs: {single / (n * together):.2f}"
        )

        print("\nTopK from RAM: saekit vs SAELens vs sparsify (same shapes, Adam, clip 1.0)")
        ours = max(bench.in_ram(bench.specs("topk")) for _ in range(repeats))
        with dense_products():
            dense = max(bench.in_ram(bench.specs("topk")) for _ in range(repeats))
        print(f"  saekit           {ours:10,.0f}")
        print(f"  saekit (dense)   {dense:10,.0f}  (ratio sparse/dense {ours / dense:.2f})")
        install = not args.no_install
        for label, given, venv, package, step in (
            ("SAELens", args.saelens_python, "saelens-venv", "sae-lens", SAELENS_STEP),
            ("sparsify", args.sparsify_python, "sparsify-venv", "eai-sparsify", SPARSIFY_STEP),
        ):
            python = library_python(given, Path(tempfile.gettempdir()) / venv, package, install)
            rate = external_rate(python, step, args, device, repeats)
            if isinstance(rate, float):
                print(f"  {label:16s} {rate:10,.0f}  (saekit / {label} {ours / rate:.2f})")
            else:
                print(f"  {label:16s} skipped: {rate}")
    finally:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()

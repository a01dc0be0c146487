"""Store throughput: can the loader deliver what the store can read, to a consumer as fast as a GPU?

Run:  .venv/bin/python benchmarks/bench_store.py [--rows 524288] [--d 768] [--dtypes float16,float8]
      [--device cpu|cuda] [--dir /tmp]

For each store dtype (the same synthetic rows written as float16 and as float8) and for
activations only and activations + gradients, one run prints side by side, cold (page cache
dropped with posix_fadvise before one pass) and warm (the next `--epochs` passes, one loader):
  (a) raw whole-chunk reads: every chunk of the fields' arrays (values and scales), in random
      order, into reused buffers, with the loader's read threads: what the store delivers with
      nothing done to the rows (the loader also reads `position`, 4 bytes a row);
  (b) the loader delivering encoded batches (the store's bytes, gathered and shuffled); with
      --device cuda, pinned, copied to the GPU and decoded there;
  (c) the loader delivering float32 batches (decoded on its thread); with --device cuda, copied;
  (d) the loader feeding N = 1, 4, 16 no-op "SAEs" the way `sae train` feeds SAEs on the device:
      the batch is moved and decoded once, scaled once, and handed to each;
and the ratios (b)/(a), (c)/(a), (d)/(a), each the best of `--repeats` rounds in which the
stores alternate. Besides rows/s, the CPU time per row of the whole process (all threads) is
printed, warm: the ratio of CPU costs is what a CPU-bound loader reaches against raw reads on
an otherwise idle machine, and it moves far less than wall time when other work shares it.
The consumer does no arithmetic, so this is the most the loader can give a GPU. Threads are
sized as `sae train` sizes them for an accelerator (`LoaderThreads.for_machine(..., "cuda")`)
unless --read-threads / --gather-threads say otherwise. Rates count rows and stored bytes read
per row (values and their scales).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from common import raw_shuffled_read
from saekit.cache_format import (
    ActivationStore,
    Batch,
    EncodedBatch,
    HookSpec,
    LoaderThreads,
    ShuffledLoader,
    StoreWriter,
    encode_block,
)
from saekit.cache_format.synthetic import synthetic_rows, synthetic_spec

HOOK = "blocks.7.hook_resid_post"
FIELD_SETS = {
    "activations": ("activations",),
    "activations + gradients": ("activations", "gradients"),
}
NO_OP_SAES = (1, 4, 16)
RAW = "(a) raw whole-chunk reads"


class Rate(NamedTuple):
    rows_per_s: float
    cpu_s_per_row: float


def drop_page_cache(root: Path) -> None:
    os.sync()  # dirty pages cannot be dropped
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def write_store(path: Path, rows: int, d: int, dtype: str) -> float:
    """Write `rows` rows from one encoded block repeated; return the write rate in bytes/s."""
    spec = synthetic_spec(
        rows,
        hooks={HOOK: HookSpec(d=d)},
        context_size=128,
        rows_per_chunk=8192,
        chunks_per_block=16,
        activation_dtype=dtype,
    )
    template = encode_block(synthetic_rows(spec, spec.layout.block(0), 128, 0), spec)
    began = time.perf_counter()
    with StoreWriter.open(path, spec) as writer:
        for block in writer.pending_blocks():
            encoded = {name: values[: block.n_rows] for name, values in template.items()}
            encoded["sequence"] = np.arange(block.start, block.stop) // 128
            writer.write(block, encoded)
        writer.finish()
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return size / (time.perf_counter() - began)


class NoOpSAE:
    """Takes the training inputs and does nothing with them but look at their first element."""

    def step(self, x_BD: torch.Tensor, g_BD: torch.Tensor | None) -> None:
        x_BD[:1, :1].sum()


def consume(batches: Iterable[Batch | EncodedBatch], device: torch.device, n_saes: int) -> int:
    """What `sae train` does with each batch before the SAEs' arithmetic: move and decode it
    once, scale it once, hand it to every SAE. Returns the rows consumed."""
    saes, rows, scale = [NoOpSAE() for _ in range(n_saes)], 0, 0.5
    for batch in batches:
        on_device = batch.on(device)
        x_BD = on_device["activations"] * scale
        g_BD = on_device["gradients"] / scale if "gradients" in on_device else None
        for sae in saes:
            sae.step(x_BD, g_BD)
        rows += len(x_BD)
    return rows


class Bench:
    """The measurements of one store and one set of fields."""

    def __init__(self, store: ActivationStore, fields: tuple[str, ...], args, device) -> None:
        self.store, self.fields, self.args, self.device = store, fields, args, device
        sized = LoaderThreads.for_machine(store.location, "cuda")
        self.threads = LoaderThreads(
            args.read_threads or sized.read, args.gather_threads or sized.gather
        )
        read = store.fields_to_arrays(fields, HOOK)
        self.row_bytes = sum(
            store.array(path).dtype.itemsize * int(np.prod(store.array(path).shape[1:]))
            for path in read.values()
        )

    def loader(self, encoded: bool, epochs: int) -> ShuffledLoader:
        return ShuffledLoader(
            self.store,
            hook=HOOK,
            fields=self.fields,
            batch_size=self.args.batch_size,
            epochs=epochs,
            encoded=encoded,
            pin_device=self.device if self.device.type == "cuda" else None,
            threads=self.threads,
        )

    def timed(self, measure: Callable[[int], int], epochs: int) -> Rate:
        """Rows/s and CPU time per row (every thread of this process) of `epochs` passes."""
        wall, cpu = time.perf_counter(), time.process_time()
        rows = measure(epochs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return Rate(rows / wall, cpu / rows)

    def measurements(self) -> dict[str, Callable[[int], int]]:
        """Label -> a function making `epochs` passes over the store; it returns the rows."""
        device = self.device

        def raw(epochs: int) -> int:
            raw_shuffled_read(self.store, HOOK, self.threads.read, self.fields, epochs)
            return epochs * self.store.n_rows_committed

        def delivered(encoded: bool, epochs: int) -> int:
            batches = self.loader(encoded, epochs)
            if device.type != "cpu":  # moved (and decoded) on the device
                batches = (b.on(device) for b in batches)
            return sum(len(b if isinstance(b, EncodedBatch) else b["activations"]) for b in batches)

        def fed(n: int, epochs: int) -> int:
            encoded = device.type != "cpu"  # as `sae train` chooses
            return consume(self.loader(encoded, epochs), device, n)

        return {
            RAW: raw,
            "(b) loader, encoded batches": lambda epochs: delivered(True, epochs),
            "(c) loader, float32 batches": lambda epochs: delivered(False, epochs),
            **{
                f"(d) feeding {n:2d} no-op SAEs": lambda epochs, n=n: fed(n, epochs)
                for n in NO_OP_SAES
            },
        }

    def cold_and_warm(self, measure: Callable[[int], int]) -> tuple[Rate, Rate]:
        """One pass after dropping the store from the page cache, then the next `--epochs`
        passes (one loader: the steady state, pipeline start-up amortised)."""
        drop_page_cache(Path(self.store.location))
        return self.timed(measure, 1), self.timed(measure, self.args.epochs)


def best(rates: list[Rate]) -> Rate:
    return Rate(max(r.rows_per_s for r in rates), min(r.cpu_s_per_row for r in rates))


def compare(benches: dict[str, Bench], repeats: int) -> None:
    """Every measurement of every store, best of `repeats` rounds in which the stores alternate
    (so that a burst of load from elsewhere hits them alike); ratios to (a), by wall time and
    by CPU time per row (the ratio a CPU-bound loader reaches on an otherwise idle machine),
    and between the first two stores."""
    names = list(benches)
    columns = f"{'cold':>8s} {'warm':>9s} {'GB/s':>5s} {'us/row':>6s} {'/(a) cold warm CPU':>18s}"
    header = "".join(f" | {n:8s}{columns}" for n in names)
    if len(names) == 2:
        header += f" | {names[1]}/{names[0]} warm"
    print(f"  {'rows/s; CPU per row (warm)':30s}{header}")
    rates: dict[str, dict[str, tuple[Rate, Rate]]] = {n: {} for n in names}
    for label in benches[names[0]].measurements():
        rounds = [
            {
                name: bench.cold_and_warm(bench.measurements()[label])
                for name, bench in benches.items()
            }
            for _ in range(repeats)
        ]
        line = f"  {label:30s}"
        for name, bench in benches.items():
            cold = best([r[name][0] for r in rounds])
            warm = best([r[name][1] for r in rounds])
            rates[name][label] = cold, warm
            raw_cold, raw_warm = rates[name][RAW]
            line += (
                f" | {cold.rows_per_s:16,.0f} {warm.rows_per_s:9,.0f}"
                f" {warm.rows_per_s * bench.row_bytes / 1e9:5.2f} {warm.cpu_s_per_row * 1e6:6.2f}"
                f" {cold.rows_per_s / raw_cold.rows_per_s:6.2f}"
                f" {warm.rows_per_s / raw_warm.rows_per_s:5.2f}"
                f" {raw_warm.cpu_s_per_row / warm.cpu_s_per_row:5.2f}"
            )
        if len(names) == 2:
            a, b = (rates[n][label][1] for n in names)
            speed, cost = b.rows_per_s / a.rows_per_s, a.cpu_s_per_row / b.cpu_s_per_row
            line += f" | x{speed:.2f}, CPU x{cost:.2f}"
        print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1 << 19)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3, help="passes of a warm measurement")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; the best is kept")
    parser.add_argument("--dtypes", default="float16,float8")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--read-threads", type=int)
    parser.add_argument("--gather-threads", type=int)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"{args.rows:,} rows, d = {args.d}, batches of {args.batch_size}, device {device}, "
        f"{len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    dtypes = args.dtypes.split(",")
    paths = {dtype: args.dir / f"saekit-bench-store-{dtype}.zarr" for dtype in dtypes}
    try:
        stores = {}
        for dtype, path in paths.items():
            shutil.rmtree(path, ignore_errors=True)
            write_rate = write_store(path, args.rows, args.d, dtype)
            stores[dtype] = ActivationStore.open(path)
            print(f"{dtype} store written at {write_rate / 1e6:,.0f} MB/s")
        for name, fields in FIELD_SETS.items():
            benches = {dtype: Bench(store, fields, args, device) for dtype, store in stores.items()}
            threads = next(iter(benches.values())).threads
            sizes = ", ".join(f"{d} {b.row_bytes:,}" for d, b in benches.items())
            print(
                f"\n{name}: stored bytes per row {sizes}; "
                f"threads {threads.read} read, {threads.gather} gather"
            )
            compare(benches, args.repeats)
    finally:
        for path in paths.values():
            shutil.rmtree(path, ignore_errors=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

"""Store throughput: write MB/s, shuffled-read MB/s, and the loader against rows already in RAM.

Run:  .venv/bin/python benchmarks/bench_store.py [--rows 524288] [--d 768] [--dir /tmp]

All figures come from one run on one machine and are printed side by side:
- write: encoded blocks (float16 activations and scaled float16 gradients) through StoreWriter;
- raw shuffled read: whole random chunks read with a thread pool, cold (page cache dropped with
  posix_fadvise) and warm;
- loader: ShuffledLoader batches of decoded float32 activations + gradients, cold (one epoch
  after dropping the page cache) and warm (several epochs);
- RAM baseline: the same rows held in RAM, batched with the same permutation-gather-decode work.
MB are 1e6 bytes of stored encoding (2 bytes per value), so the numbers compare to disk rates.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import raw_shuffled_read
from saekit.cache_format import ActivationStore, ShuffledLoader, StoreWriter, encode_block
from saekit.cache_format.reader import ROW_FIELDS
from saekit.synthetic import synthetic_rows, synthetic_spec

HOOK = "blocks.7.hook_resid_post"


def drop_page_cache(root: Path) -> None:
    os.sync()  # dirty pages cannot be dropped
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def write_store(path: Path, rows: int, d: int) -> tuple[float, int]:
    """Write `rows` rows from one pre-encoded block repeated; return (seconds, bytes written)."""
    from saekit.cache_format import HookSpec

    spec = synthetic_spec(
        rows,
        hooks={HOOK: HookSpec(d=d)},
        context_size=128,
        rows_per_chunk=8192,
        chunks_per_block=16,
        holdout_rows=0,
    )
    block0 = spec.layout.block(0)
    template = encode_block(synthetic_rows(spec, block0, 128, 0), spec)
    started = time.perf_counter()
    with StoreWriter.open(path, spec) as writer:
        for block in writer.pending_blocks():
            encoded = {name: values[: block.n_rows] for name, values in template.items()}
            encoded["sequence"] = np.arange(block.start, block.stop) // 128
            writer.write(block, encoded)
        writer.finish()
    seconds = time.perf_counter() - started
    return seconds, sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def loader_rate(store: ActivationStore, batch_size: int, epochs: int) -> tuple[float, int]:
    """(rows/s, rows) of decoded activations + gradients from the loader, over `epochs`."""
    loader = ShuffledLoader(
        store, hook=HOOK, fields=("activations", "gradients"), batch_size=batch_size, epochs=epochs
    )
    began, rows = time.perf_counter(), 0
    for batch in loader:
        rows += len(batch["activations"])
    return rows / (time.perf_counter() - began), rows


def ram_rate(store: ActivationStore, batch_size: int, epochs: int) -> float:
    """rows/s of batching the same rows from RAM: permutation gather + decode, no I/O."""
    fields = ["activations", "gradients", "position"]
    raw = store.read(fields, 0, store.n_rows_committed, HOOK)
    keep = raw.pop("position") != 0
    raw = {name: values[keep] for name, values in raw.items()}
    n = len(raw["activations"])
    began = time.perf_counter()
    for epoch in range(epochs):
        order = np.random.default_rng(epoch).permutation(n)
        for first in range(0, n - batch_size + 1, batch_size):
            index = order[first : first + batch_size]
            batch = store.decode({name: values[index] for name, values in raw.items()})
            assert batch["activations"].dtype == torch.float32
    return epochs * (n // batch_size * batch_size) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1 << 19)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per loader measurement")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    path = args.dir / "saekit-bench-store.zarr"
    shutil.rmtree(path, ignore_errors=True)
    try:
        seconds, size = write_store(path, args.rows, args.d)
        store = ActivationStore.open(path)
        row_bytes = 2 * args.d * 2  # float16 activations + float16 gradients
        print(
            f"store: {args.rows:,} rows x d={args.d}, {size / 1e9:.2f} GB on disk "
            f"({size / args.rows:,.0f} bytes/row incl. {len(ROW_FIELDS)} row columns)"
        )
        print(f"write                          {size / 1e6 / seconds:8.0f} MB/s")
        for threads in (1, 4):
            drop_page_cache(path)
            cold = raw_shuffled_read(store, HOOK, threads)
            warm = raw_shuffled_read(store, HOOK, threads)
            print(
                f"raw shuffled read, {threads} thread(s)  {cold:8.0f} MB/s cold "
                f"{warm:8.0f} MB/s warm"
            )
        drop_page_cache(path)
        cold_rows, _ = loader_rate(store, args.batch_size, 1)
        warm_rows, _ = loader_rate(store, args.batch_size, args.epochs)
        ram_rows = ram_rate(store, args.batch_size, args.epochs)
        print(
            f"loader (decoded float32)       {cold_rows * row_bytes / 1e6:8.0f} MB/s cold "
            f"{warm_rows * row_bytes / 1e6:8.0f} MB/s warm  ({warm_rows:,.0f} rows/s warm)"
        )
        print(
            f"same rows from RAM             {ram_rows * row_bytes / 1e6:8.0f} MB/s       "
            f"({ram_rows:,.0f} rows/s)"
        )
        print(
            f"ratio loader / RAM             {cold_rows / ram_rows:8.2f} cold "
            f"{warm_rows / ram_rows:8.2f} warm"
        )
    finally:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Loader rows/s for a cross-layer transcoder's batches (every layer's stream before the MLP and
MLP output of a row: 2·n_layers hooks) against one hook's batches, from the same store.

Run:  .venv/bin/python benchmarks/bench_clt_loader.py [--layers 12] [--d 768] [--rows 16384]
      [--dtype bfloat16] [--batch-size 4096] [--passes 3] [--dir /tmp]

A synthetic store (GPT-2-like rows, no gradients) with `blocks.L.hook_resid_mid` and
`blocks.L.hook_mlp_out` for every layer is written once; the loader then serves float32 batches
(decoded on its thread, as `sae train` gets them on a CPU) of (a) one hook and (b) all 2·L hooks,
warm (the first pass is discarded), the two alternating `--passes` times; the best rate of each
is printed with the bytes per row and the ratio (b)/(a) of rows/s and of bytes/s. A CLT batch
moves 2·L times the bytes of a one-hook batch; what this measures is whether the loader's rate
in bytes holds up when a row is 2·L hooks wide.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from saekit.cache_format import ActivationStore, HookSpec, LoaderThreads, ShuffledLoader
from saekit.cache_format.schema import ACTIVATIONS, hook_field
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store


def rate(store: ActivationStore, hooks: list[str], batch_size: int) -> float:
    """Rows/s of one warm pass over the training rows, `hooks`' activations in every batch."""
    fields = tuple(hook_field(ACTIVATIONS, hook) for hook in hooks)
    loader = ShuffledLoader(
        store,
        fields=fields,
        batch_size=batch_size,
        seed=0,
        epochs=1,
        threads=LoaderThreads.for_machine(store.location, "cpu"),
    )
    start, rows = time.perf_counter(), 0
    for batch in loader:
        rows += len(batch[fields[0]])
    return rows / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    hooks = [
        f"blocks.{layer}.{name}"
        for layer in range(args.layers)
        for name in ("hook_resid_mid", "hook_mlp_out")
    ]
    root = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        spec = synthetic_spec(
            args.rows,
            hooks={hook: HookSpec(d=args.d, gradients=False) for hook in hooks},
            rows_per_chunk=4096,
            chunks_per_block=1,
            activation_dtype=args.dtype,
        )
        write_synthetic_store(root / "store.zarr", spec)
        store = ActivationStore.open(root / "store.zarr")
        bytes_per_hook = (
            args.d * {"float16": 2, "float8": 1, "bfloat16": 2, "float32": 4}[args.dtype]
        )
        cases = {"(a) one hook": hooks[:1], f"(b) all {len(hooks)} hooks (a CLT's batch)": hooks}
        best = dict.fromkeys(cases, 0.0)
        for case_hooks in cases.values():
            rate(store, case_hooks, args.batch_size)  # warm the page cache
        for _ in range(args.passes):
            for name, case_hooks in cases.items():
                best[name] = max(best[name], rate(store, case_hooks, args.batch_size))
        print(f"{args.rows:,} rows, d = {args.d}, {args.dtype}, batches of {args.batch_size}")
        for (name, case_hooks), rows_per_s in zip(cases.items(), best.values(), strict=True):
            width = bytes_per_hook * len(case_hooks)
            print(f"{name:40} {rows_per_s:12,.0f} rows/s  {rows_per_s * width / 1e9:6.2f} GB/s"
                  f"  ({width:,} bytes/row)")  # fmt: skip
        one, clt = best.values()
        print(f"(b)/(a): rows/s {clt / one:.3f}, bytes/s {clt * len(hooks) / one:.2f}")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()

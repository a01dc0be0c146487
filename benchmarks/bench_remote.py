"""Remote and distributed throughput: S3 vs local disk reads, harvest on 1 vs 2 local workers.

Run:  .venv/bin/python benchmarks/bench_remote.py [--rows 131072] [--tokens 49152]

Printed side by side from one run:
- shuffled reads of the same store from local disk and from an S3-compatible server (moto) on
  127.0.0.1: raw chunk reads with 8 threads, and ShuffledLoader batches. moto is a Python server,
  so the S3 figures are a floor for real object storage, not an estimate of it.
- harvest of the same tokens with a small GPT-2 (4 layers, d = 256): in this process, and as a
  sharded harvest on a dask LocalCluster of 1 and of 2 workers (wall time, worker start-up and
  model loading included, since that is what a user waits for).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import raw_shuffled_read, start_moto
from saekit.cache_format import ActivationStore, HookSpec, LoaderThreads, ShuffledLoader
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store
from saekit.demo import build_tiny_lm, generate_documents, write_corpus

HOOK = "blocks.7.hook_resid_post"


def loader_rows_s(store: ActivationStore, threads: int = 8) -> float:
    loader = ShuffledLoader(
        store,
        hook=HOOK,
        fields=("activations", "gradients"),
        batch_size=4096,
        threads=LoaderThreads(read=threads),
    )
    began, rows = time.perf_counter(), 0
    for batch in loader:
        rows += len(batch["activations"])
    return rows / (time.perf_counter() - began)


def read_comparison(work: Path, rows: int) -> None:
    import s3fs

    local = work / "store.zarr"
    spec = synthetic_spec(
        rows,
        hooks={HOOK: HookSpec(d=768)},
        context_size=128,
        rows_per_chunk=8192,
        chunks_per_block=4,
    )
    write_synthetic_store(local, spec)
    server, endpoint = start_moto()
    try:
        options = {"endpoint_url": endpoint, "key": "bench", "secret": "bench"}
        fs = s3fs.S3FileSystem(**options)
        fs.mkdir("bench")
        fs.put(str(local), "bench/store.zarr", recursive=True)
        stores = {
            "local disk": ActivationStore.open(local),
            "S3 (moto, 127.0.0.1)": ActivationStore.open("s3://bench/store.zarr", options),
        }
        print(f"store: {rows:,} rows, d=768, float16 activations + gradients, 12.6 MB chunks")
        for name, store in stores.items():
            raw = raw_shuffled_read(store, HOOK, threads=8)[0] / 1e6
            rate = loader_rows_s(store)
            print(
                f"  {name:22s} raw shuffled chunk reads {raw:7.0f} MB/s   "
                f"loader {rate:9,.0f} rows/s ({rate * 3072 / 1e6:5.0f} MB/s)"
            )
    finally:
        server.kill()
        server.wait()


def harvest_comparison(work: Path, tokens: int) -> None:
    model = build_tiny_lm(
        work / "gpt2-4x256",
        generate_documents(3000, seed=0),
        vocab_size=2048,
        n_layer=4,
        n_embd=256,
        n_head=4,
        n_positions=128,
    )
    corpus = write_corpus(work / "corpus.txt", 40_000, seed=1)
    common = [
        "harvest",
        "--model",
        str(model),
        "--dataset",
        str(corpus),
        "--hook",
        "blocks.2.hook_resid_post",
        "--tokens",
        str(tokens),
        "--holdout-tokens",
        "4096",
        "--context-size",
        "128",
        "--batch-size",
        "8",
        "--rows-per-chunk",
        "4096",
        "--chunks-per-block",
        "2",
    ]
    runs = {
        "this process, unsharded": [],
        "LocalCluster, 1 worker (2 shards)": ["--shards", "2", "--cluster", "local:1"],
        "LocalCluster, 2 workers (2 shards)": ["--shards", "2", "--cluster", "local:2"],
    }
    print(f"harvest: {tokens:,} tokens of a 4-layer d=256 GPT-2 with gradients")
    for name, extra in runs.items():
        out = work / f"harvest-{len(extra)}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        began = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "saekit", *common, "--out", str(out), *extra],
            check=True,
            capture_output=True,
        )
        seconds = time.perf_counter() - began
        print(f"  {name:36s} {tokens / seconds:8,.0f} tokens/s ({seconds:5.1f} s wall)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1 << 17)
    parser.add_argument("--tokens", type=int, default=49_152)
    parser.add_argument("--skip-harvest", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="saekit-bench-remote-"))
    try:
        read_comparison(work, args.rows)
        if not args.skip_harvest:
            harvest_comparison(work, args.tokens)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

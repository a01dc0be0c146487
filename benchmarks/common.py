"""Measurements shared by the benchmark scripts."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from saekit.cache_format import ActivationStore


def synchronize(device: torch.device | str) -> None:
    """Wait for every kernel queued on `device`: on CUDA a timed region must start and end with
    this, or it times the launches, not the work (a no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def raw_shuffled_read(
    store: ActivationStore,
    hook: str,
    threads: int,
    fields: tuple[str, ...] = ("activations", "gradients"),
    epochs: int = 1,
) -> tuple[float, float]:
    """(bytes/s, rows/s) of reading every chunk of the fields' arrays (their scales included) in
    random order, whole chunks, each thread into its own reused buffers, `epochs` times: the
    rate the store delivers with nothing done to the rows."""
    chunk = store.spec.layout.rows_per_chunk
    chunks = range(0, store.n_rows_committed, chunk)
    starts = np.concatenate([np.random.default_rng(e).permutation(chunks) for e in range(epochs)])
    layout = store.raw_layout(fields, hook)
    buffers = threading.local()

    def read(start: int) -> int:
        if not hasattr(buffers, "out"):
            buffers.out = {
                name: np.empty((chunk, *shape), dtype) for name, (shape, dtype) in layout.items()
            }
        stop = min(int(start) + chunk, store.n_rows_committed)
        out = {name: values[: stop - start] for name, values in buffers.out.items()}
        raw = store.read(fields, int(start), stop, hook, out=out)
        return sum(v.nbytes for v in raw.values())

    began = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(read, starts))
    seconds = time.perf_counter() - began
    return total / seconds, epochs * store.n_rows_committed / seconds


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return server, f"http://127.0.0.1:{port}"

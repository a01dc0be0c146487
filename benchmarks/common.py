"""Measurements shared by the benchmark scripts."""

from __future__ import annotations

import socket
import subprocess
import sys
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


def raw_shuffled_read(store: ActivationStore, hook: str, threads: int) -> float:
    """MB/s of reading every chunk of activations + gradients in random order."""
    chunk = store.spec.layout.rows_per_chunk
    starts = np.random.default_rng(0).permutation(range(0, store.n_rows_committed, chunk))

    def read(start: int) -> int:
        raw = store.read(["activations", "gradients"], int(start), int(start) + chunk, hook)
        return sum(v.nbytes for v in raw.values())

    began = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(read, starts))
    return total / 1e6 / (time.perf_counter() - began)


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

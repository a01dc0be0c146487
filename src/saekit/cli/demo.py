"""`sae demo`: the offline end-to-end job (it grows as harvest, train and eval land)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from saekit.cache_format import ActivationStore, ShuffledLoader
from saekit.cache_format.summary import describe
from saekit.cache_format.verify import verify_store
from saekit.cli.common import console
from saekit.cli.store import print_summary
from saekit.errors import IntegrityError
from saekit.synthetic import synthetic_spec, write_synthetic_store

DEFAULT_OUT = Path("demo-output")


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Annotated[Path, typer.Option(help="Directory for the demo's files.")] = DEFAULT_OUT,
    ) -> None:
        """Run the offline demo: write a store, describe it, verify it and stream it."""
        store_path = out / "synthetic.zarr"
        console.rule("1. write a synthetic store (GPT-2-like activations and gradients)")
        write_synthetic_store(store_path, synthetic_spec(65536, holdout_rows=4096))
        store = ActivationStore.open(store_path)
        print_summary(describe(store))
        console.rule("2. verify every chunk")
        problems = verify_store(store)
        if problems:
            raise IntegrityError(f"demo store failed verification: {problems[0]}")
        console.print("ok: every checksum and value is sound")
        console.rule("3. stream one shuffled epoch of activations and gradients")
        loader = ShuffledLoader(store, fields=("activations", "gradients"), batch_size=1024)
        started, rows = time.perf_counter(), 0
        for batch in loader:
            rows += len(batch["activations"])
        seconds = time.perf_counter() - started
        console.print(f"{rows:,} training rows in {seconds:.2f} s ({rows / seconds:,.0f} rows/s)")
        console.print(f"demo finished; files are in {out}")

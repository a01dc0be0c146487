"""`sae info` and `sae verify`: describe and check a store (both read-only)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from saekit.base.units import human_bytes
from saekit.cache_format import ActivationStore
from saekit.cache_format.summary import describe
from saekit.cache_format.validation import StoreMetadataError
from saekit.cache_format.verify import chunks_to_check, verify_store
from saekit.cli.common import (
    StorageOptions,
    StoreArgument,
    console,
    err_console,
    parse_storage_options,
    print_table,
    progress_bar,
    stop_bar,
)


def print_store_summary(info: dict) -> None:
    rows = info["rows"]
    table = Table(title=f"saekit store {info['location']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "format",
        f"{info['format']} v{info['format_version']} "
        f"(saekit {info['saekit_version']}, created {info['created']})",
    )
    state = "complete" if info["complete"] else "in progress or interrupted"
    capacity = rows["capacity"] if rows["capacity"] is not None else "open-ended"
    table.add_row("rows", f"{rows['committed']:,} committed of {capacity} ({state})")
    if info["shards"]["count"] > 1:
        ranges = ", ".join(f"{a:,}-{b:,}" for a, b in rows["committed_ranges"]) or "none"
        table.add_row("shards", f"{info['shards']['count']} shards; committed rows {ranges}")
    table.add_row(
        "split",
        f"{rows['holdout']:,} held-out rows (the first ones), {rows['train']:,} training rows",
    )
    for name, hook in info["hooks"].items():
        grads = f"gradients {info['gradient_encoding']}" if hook["gradients"] else "no gradients"
        table.add_row(
            "hook", f"{name}: d={hook['d']}, activations {info['activation_dtype']}, {grads}"
        )
    layout = info["layout"]
    table.add_row(
        "layout",
        f"chunks of {layout['rows_per_chunk']:,} rows, blocks of "
        f"{layout['rows_per_block']:,} rows, seed {layout['seed']}",
    )
    per_row = info["bytes_per_row"]
    table.add_row(
        "size",
        human_bytes(info["bytes"]) + (f" ({per_row:,.0f} bytes per row)" if per_row else ""),
    )
    for key, value in {**info["identity"], **info["provenance"]}.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    print_table(table)


def register(app: typer.Typer) -> None:
    @app.command()
    def info(
        store: StoreArgument,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
        storage_options: StorageOptions = None,
    ) -> None:
        """Summarise a store: rows, split, hooks, dtypes, size and provenance."""
        options = parse_storage_options(storage_options)
        summary = describe(ActivationStore.open(store, options), options)
        if as_json:
            print(json.dumps(summary, indent=2))
        else:
            print_store_summary(summary)

    @app.command()
    def verify(
        store: StoreArgument,
        storage_options: StorageOptions = None,
    ) -> None:
        """Check the metadata and every committed chunk (checksums, NaN/Inf and other
        impossible values). Exit 0 if sound, 1 if damaged."""
        try:
            opened = ActivationStore.open(store, parse_storage_options(storage_options))
        except StoreMetadataError as error:
            for problem in error.problems:
                err_console.print(f"corrupt: metadata: {problem}", markup=False, soft_wrap=True)
            raise typer.Exit(1) from None
        total = sum(1 for _ in chunks_to_check(opened))
        bar = progress_bar()
        bar.start()
        try:
            task = bar.add_task("verifying chunks", total=total)
            problems = verify_store(opened, on_chunk=lambda: bar.advance(task))
        finally:
            stop_bar(bar, vanish=True)  # what is left on stderr is one line per problem
        for problem in problems:
            err_console.print(f"corrupt: {problem}", markup=False, soft_wrap=True)
        if problems:
            raise typer.Exit(1)
        console.print(
            f"ok: {total} chunks in {len(opened.array_paths)} arrays, "
            f"{opened.n_rows_committed:,} committed rows"
        )

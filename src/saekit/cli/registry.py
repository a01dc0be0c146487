"""`sae publish` and `sae ls`: a team's registry of stores and SAEs under any fsspec URL."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from saekit.cli.common import StorageOptions, console, parse_storage_options, print_table


def _number(value: Any, form: str) -> str:
    return "–" if value is None else format(value, form)


def _headline(record: dict[str, Any]) -> dict[str, Any]:
    """The numbers `sae ls` shows of a published SAE: its first evaluated mode's, else its
    training's last metrics line."""
    metrics = record.get("metrics") or {}
    return next(iter(metrics.values()), None) or record.get("training_metrics") or {}


def print_listing(records: list[dict[str, Any]], url: str) -> None:
    stores = [r for r in records if r["kind"] == "store"]
    saes = [r for r in records if r["kind"] == "sae"]
    if not records:
        console.print(f"no store or published SAE under {url}", markup=False)
    if stores:
        table = Table(title=f"stores under {url}", title_justify="left")
        for column in ("store", "model", "hooks (d)", "tokens", "complete", "fingerprint"):
            table.add_column(column)
        for r in stores:
            hooks = ", ".join(f"{hook} ({d})" for hook, d in r["hooks"].items())
            table.add_row(
                escape(r["url"]), escape(str(r["model"])), escape(hooks), f"{r['rows']:,}",
                "yes" if r["complete"] else "no", r["fingerprint"],
            )  # fmt: skip
        print_table(table)
    if saes:
        table = Table(title=f"SAEs published under {url}", title_justify="left")
        for column in ("SAE", "variant", "hook", "latents", "k", "store", "tokens", "L0", "NMSE"):
            table.add_column(column)
        for r in saes:
            numbers = _headline(r)
            table.add_row(
                escape(r["url"]), r.get("variant", ""), escape(str(r.get("hook"))),
                _number(r.get("d_sae"), ","), _number(r.get("k"), "d"),
                str(r.get("store_fingerprint")), _number(r.get("training_tokens"), ","),
                _number(numbers.get("l0"), ".1f"), _number(numbers.get("nmse"), ".4f"),
            )  # fmt: skip
        print_table(table)


def register(app: typer.Typer) -> None:
    @app.command()
    def publish(
        saes: Annotated[
            list[str],
            typer.Argument(help="Runs (all their SAEs) or SAE directories (RUN/saes/NAME)."),
        ],
        to: Annotated[
            str, typer.Option(help="The registry: a shared directory or an fsspec URL (s3://...).")
        ],
        report: Annotated[
            list[str] | None,
            typer.Option(
                help="A report of sae eval (its rows and inspect/ dashboards are published with "
                "each SAE) or an inspect site; repeatable."
            ),
        ] = None,
        name: Annotated[
            str | None, typer.Option(help="Published name of a single SAE (default: its name).")
        ] = None,
        store: Annotated[
            str | None,
            typer.Option(
                help="The store's URL as the team reads it: recorded in the published cfg.json "
                "(checked to be the SAE's store)."
            ),
        ] = None,
        replace: Annotated[
            bool, typer.Option("--replace", help="Publish over an SAE published under that name.")
        ] = False,
        storage_options: StorageOptions = None,
    ) -> None:
        """Publish saved SAEs to a registry with their card, report rows and dashboards."""
        from saekit.registry import PublishRequest, publish_saes

        request = PublishRequest(
            saes=tuple(saes),
            to=to,
            name=name,
            reports=tuple(report or ()),
            store=store,
            replace=replace,
            storage_options=parse_storage_options(storage_options),
        )
        for url in publish_saes(request):
            console.print(f"published: {url}", markup=False)

    @app.command(name="ls")
    def list_registry(
        url: Annotated[str, typer.Argument(help="A registry: a directory or an fsspec URL.")],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON records.")] = False,
        storage_options: StorageOptions = None,
    ) -> None:
        """List the stores and published SAEs under a URL, from their metadata alone."""
        from saekit.registry import listing

        records = listing(url, parse_storage_options(storage_options))
        if as_json:
            console.print_json(json.dumps(records))
        else:
            print_listing(records, url)

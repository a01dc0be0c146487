"""`sae publish`: saved SAEs copied to a team's registry (any fsspec URL) with everything a
teammate needs, published atomically (`saekit.base.published`).

    URL/<name>/cfg.json, sae.safetensors, exports.json, saelens/, circuit_tracer/   the SAE
    URL/<name>/README.md                 its model card (Hugging Face Hub layout, `card.py`)
    URL/<name>/training/config.json      the run's config; training/metrics.jsonl: its lines
    URL/<name>/report.json               its rows of the given reports (`sae eval`)
    URL/<name>/inspect/                  its latent dashboards, when a given report has them
    URL/<name>/saekit-published.json     the manifest, written last

With `store`, the published cfg.json names that store (where the team reads it), after
checking that it is the store the SAE was trained on (the same fingerprint).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saekit.base.errors import SaekitError
from saekit.base.fingerprint import store_fingerprint
from saekit.base.locations import absolute_location, is_local
from saekit.base.published import check_destination, check_name, publish
from saekit.cache_format import ActivationStore
from saekit.dashboard import is_site, one_sae_site
from saekit.evaluate import INSPECT_SITE
from saekit.registry.card import CARD_METRICS, model_card
from saekit.train import CFG_FILE, METRICS_FILE, SAEConfig, read_metrics, run_of, sae_directories

REPORT_FILE = "report.json"
RUN_CONFIG = "config.json"


@dataclass(frozen=True)
class PublishRequest:
    """What `sae publish` takes."""

    saes: tuple[str, ...]  # runs (all their SAEs) or saved SAE directories
    to: str  # the registry: a directory or an fsspec URL
    name: str | None = None  # the published name of a single SAE (default: its own)
    reports: tuple[str, ...] = ()  # `sae eval` reports (and their inspect/) or inspect sites
    store: str | None = None  # the store's URL as the team reads it
    replace: bool = False
    storage_options: dict[str, Any] | None = None


@dataclass(frozen=True)
class Sources:
    """Where a report's rows and dashboards are."""

    rows: list[dict[str, Any]]  # every row, with the report's head under "head"
    sites: list[Path]


def publish_saes(request: PublishRequest) -> list[str]:
    """Publish every SAE the request names; return their URLs. Everything is checked (the
    SAEs, the reports, the store, the names) before anything is written."""
    directories = [d for path in request.saes for d in _local_saes(path)]
    if request.name is not None and len(directories) != 1:
        raise SaekitError(f"--name names one SAE, but {len(directories)} are given")
    sources = _sources(request.reports)
    store = _store_facts(request) if request.store else None
    plans = []
    for directory in directories:
        cfg = SAEConfig.read(directory / CFG_FILE)
        name = request.name or cfg.name
        check_name(name)
        if store is not None and store["fingerprint"] != _fingerprint(cfg):
            raise SaekitError(
                f"store {request.store} is not the store {directory} was trained on (fingerprint "
                f"{store['fingerprint']}, not {_fingerprint(cfg)}); give that store's URL"
            )
        plans.append((name, directory, cfg))
    names = [name for name, _, _ in plans]
    if len(set(names)) != len(names):
        raise SaekitError("two of the SAEs have one name; publish them one at a time with --name")
    for name in names:
        check_destination(request.to, name, request.replace, request.storage_options)
    urls = []
    for name, directory, cfg in plans:
        files, facts = _contents(directory, cfg, sources, request.store)
        url = f"{absolute_location(request.to).rstrip('/')}/{name}"
        files["README.md"] = model_card({**facts, "name": name}, url).encode()
        urls.append(
            publish(
                request.to,
                name,
                files,
                {**facts, "name": name},
                request.replace,
                request.storage_options,
            )
        )
    return urls


def _local_saes(path: str) -> list[Path]:
    if not is_local(path):
        raise SaekitError(f"{path} is a URL; sae publish copies local runs or saved SAEs")
    return sae_directories(path)


def _sources(reports: tuple[str, ...]) -> Sources:
    """The rows and dashboards of each `--report` (an eval report, with its inspect/ if built,
    or an inspect site)."""
    rows, sites = [], []
    for given in reports:
        directory = Path(given)
        report_file = directory / REPORT_FILE
        if report_file.is_file():
            try:
                report = json.loads(report_file.read_text())
                head = {key: report[key] for key in ("saekit_version", "store", "model", "tokens")}
                runs = [absolute_location(run) for run in report["runs"]]
                rows += [{**row, "head": head, "runs": runs} for row in report["rows"]]
            except (ValueError, KeyError, TypeError):
                raise SaekitError(f"{report_file} is not a report written by sae eval") from None
            if is_site(directory / Path(INSPECT_SITE).parent):
                sites.append(directory / Path(INSPECT_SITE).parent)
        elif is_site(directory):
            sites.append(directory)
        else:
            raise SaekitError(
                f"--report {given} is neither a report (sae eval --out) nor an inspect site "
                "(sae inspect --out)"
            )
    return Sources(rows, sites)


def _store_facts(request: PublishRequest) -> dict[str, Any]:
    assert request.store is not None
    store = ActivationStore.open(request.store, request.storage_options)
    return {"fingerprint": store_fingerprint(store.spec.identity, store.n_rows_committed)}


def _fingerprint(cfg: SAEConfig) -> str:
    return store_fingerprint(cfg.store.get("identity", {}), cfg.store.get("n_rows_committed", 0))


def _contents(
    directory: Path, cfg: SAEConfig, sources: Sources, store_url: str | None
) -> tuple[dict[str, bytes | Path], dict[str, Any]]:
    """(files, facts) of one SAE's published folder (the card aside)."""
    files: dict[str, bytes | Path] = {
        path.relative_to(directory).as_posix(): path
        for path in sorted(directory.rglob("*"))
        if path.is_file() and not path.name.startswith(".")
    }
    if store_url is not None:  # the team's copy of the store, checked to be the same
        store = {**cfg.store, "location": absolute_location(store_url)}
        files[CFG_FILE] = json.dumps(dataclasses.asdict(cfg) | {"store": store}, indent=2).encode()
    run = run_of(directory)
    final: dict[str, Any] = {}
    if run is not None and (run / RUN_CONFIG).is_file():
        files[f"training/{RUN_CONFIG}"] = run / RUN_CONFIG
        lines = [r for r in read_metrics(run / METRICS_FILE) if r["sae"] == cfg.name]
        if lines:
            files[f"training/{METRICS_FILE}"] = "".join(
                json.dumps(r) + "\n" for r in lines
            ).encode()
            final = {key: lines[-1][key] for key in ("nmse", "l0", "dead_fraction")}
    rows = _rows_of(directory, cfg, sources.rows)
    if rows:
        head = rows[0]["head"]
        kept = [{k: v for k, v in row.items() if k not in ("head", "runs")} for row in rows]
        files[REPORT_FILE] = json.dumps({**head, "rows": kept}, indent=2).encode()
    for site in sources.sites:
        found = one_sae_site(site, run.name if run else "", cfg.name)
        if found is not None:
            files.update({f"inspect/{relative}": source for relative, source in found.items()})
            break
    return files, _facts(cfg, rows, final)


def _rows_of(directory: Path, cfg: SAEConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The report rows of this SAE: its name, from a report of its run (or of itself)."""
    run = run_of(directory)
    mine = {str(p.resolve()) for p in (directory, run) if p is not None}
    return [
        row
        for row in rows
        if row["name"] == cfg.name and mine & {str(Path(r).resolve()) for r in row["runs"]}
    ]


def _facts(cfg: SAEConfig, rows: list[dict[str, Any]], final: dict[str, Any]) -> dict[str, Any]:
    """What `sae ls` shows and the model card says: no tensor needs reading for it."""
    identity = cfg.store.get("identity", {})
    metrics = {}
    for row in rows:
        numbers = {**row["offline"], **(row.get("online") or {})}
        metrics[row["mode"]] = {key: numbers[key] for key in CARD_METRICS if key in numbers}
    return {
        "variant": cfg.variant,
        "hook": cfg.hook,
        "sources": list(cfg.sources),
        "targets": list(cfg.targets),
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "k": cfg.k,
        "model": identity.get("model"),
        "dataset": identity.get("dataset"),
        "store_fingerprint": _fingerprint(cfg),
        "training_tokens": cfg.training.get("tokens"),
        "metrics": metrics,
        "training_metrics": final,
        "saekit_version": cfg.saekit_version,
    }

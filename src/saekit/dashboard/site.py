"""The static site: HTML, CSS and JS copied from the package, and the data as script files.

Browsers refuse `fetch()` of `file://` URLs, but load `<script>` elements from anywhere, so each
data file is one JSON document wrapped in a call, `saekitData("<name>", JSON.parse('<JSON>'));`,
loaded on demand by inserting a script element. The site works opened from the file system and
from any static HTTP server, and fetches nothing else. `inspect.json` at the root describes the
site for programs.

    DIR/index.html, dashboard.js, dashboard.css
    DIR/inspect.json                    what was inspected, with which settings (plain JSON)
    DIR/data/site.js                    the same, for the page
    DIR/data/vocab.js                   token id -> string, for every token shown
    DIR/data/sae-<i>/index.js           one column per statistic, one entry per latent
    DIR/data/sae-<i>/latents/<j>.js     latent j's histogram, contexts and logit effects

The site is written into a new directory of a random name beside DIR (`base.outputs.staged`),
its ownership marker first, and moved into place at the end, so DIR holds either the previous site
or the complete new one. A directory at DIR is replaced only when saekit marked it as a site.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from saekit.base.errors import write_error
from saekit.base.outputs import (
    INSPECT_SITE,
    marker_kind,
    replace_directory,
    staged,
    write_marker,
)

from .pages import SaeData

ASSETS = ("index.html", "dashboard.js", "dashboard.css")
MANIFEST = "inspect.json"
FORMAT = "saekit.inspect"
FORMAT_VERSION = 1


def is_site(directory: Path) -> bool:
    """Whether `directory` holds a site written by `sae inspect` (its marker, not a file name)."""
    return marker_kind(directory) == INSPECT_SITE


def is_unmarked_site(directory: Path) -> bool:
    """Whether `directory` looks like a site of a saekit that wrote no marker (not replaced)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def data_script(name: str, value: object) -> str:
    """The text of a data file: `saekitData("<name>", JSON.parse('<JSON>'));`. The JSON travels
    as a string (only backslashes and single quotes escaped): browsers parse a large JSON string
    several times faster than the same data written as a JavaScript literal."""
    payload = json.dumps(value, separators=(",", ":"), allow_nan=False)
    literal = payload.replace("\\", "\\\\").replace("'", "\\'")
    return f"saekitData({json.dumps(name)},JSON.parse('{literal}'));\n"


def read_data_script(path: Path) -> object:
    """The JSON value held by a data file (for programs reading a site)."""
    text = path.read_text()
    literal = text[text.index("JSON.parse('") + len("JSON.parse('") : text.rindex("'));")]
    return json.loads(re.sub(r"\\(.)", r"\1", literal))


def write_site(
    out: Path,
    manifest: dict,
    saes: list[SaeData],
    vocabulary: dict[int, str],
    on_latent: Callable[[int], None] = lambda n: None,
) -> Path:
    """Write the whole site into `out` (replacing a previous site there); return index.html."""
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest}
    manifest["saes"] = [{"id": i, **sae.summary} for i, sae in enumerate(saes)]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise write_error(out.parent, error, "create") from None
    with staged(out) as staging:
        site = staging / "site"
        site.mkdir()
        write_marker(site, INSPECT_SITE)
        _write_files(site, manifest, saes, vocabulary, on_latent)
        replace_directory(site, out, staging, INSPECT_SITE)
    return out / "index.html"


def _write_files(
    root: Path,
    manifest: dict,
    saes: list[SaeData],
    vocabulary: dict[int, str],
    on_latent: Callable[[int], None],
) -> None:
    data = root / "data"
    data.mkdir(parents=True)
    assets = resources.files("saekit.dashboard") / "assets"
    for name in ASSETS:
        (root / name).write_bytes((assets / name).read_bytes())
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    (data / "site.js").write_text(data_script("site", manifest))
    vocab = {str(i): text for i, text in vocabulary.items()}
    (data / "vocab.js").write_text(data_script("vocab", vocab))
    for number, sae in enumerate(saes):
        folder = data / f"sae-{number}"
        (folder / "latents").mkdir(parents=True)
        (folder / "index.js").write_text(data_script(f"sae-{number}/index", sae.index))
        for latent, detail in sae.latents.items():
            name = f"sae-{number}/latents/{latent}"
            (data / f"{name}.js").write_text(data_script(name, detail))
            on_latent(1)


def one_sae_site(site: Path, run: str, name: str) -> dict[str, bytes | Path] | None:
    """The files (relative path -> content or source file) of a site that shows only the SAE
    `name` of run `run` (its data renumbered as SAE 0), cut out of a site built for several; None
    when the site does not show that SAE."""
    manifest = json.loads((site / MANIFEST).read_text())
    entry = next((e for e in manifest["saes"] if (e["name"], e["run"]) == (name, run)), None)
    if entry is None:
        return None
    alone = {**manifest, "saes": [{**entry, "id": 0}]}
    files: dict[str, bytes | Path] = {asset: site / asset for asset in ASSETS}
    files[MANIFEST] = (json.dumps(alone, indent=2) + "\n").encode()
    files["data/site.js"] = data_script("site", alone).encode()
    files["data/vocab.js"] = site / "data" / "vocab.js"
    source = site / "data" / f"sae-{entry['id']}"
    for path in sorted(source.rglob("*.js")):
        relative = path.relative_to(source).with_suffix("").as_posix()
        files[f"data/sae-0/{relative}.js"] = data_script(
            f"sae-0/{relative}", read_data_script(path)
        ).encode()
    return files

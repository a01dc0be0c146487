"""The publishing protocol: folders published under any fsspec URL (a bucket, a shared
directory, a static HTTP server for readers), atomically, and read back without writing.

    URL/<name>/...                        the published files
    URL/<name>/.saekit-publishing         written first: a publish of <name> is under way (or was
                                          cut short); it says who and when
    URL/<name>/saekit-published.json      written last (one PUT; a rename on a local disk): the
                                          manifest — every file's size and sha256, and the facts
                                          `sae ls` shows

A folder is published while, and only while, its manifest exists: `entries` (what `sae ls`
shows) and `fetch` (what loading reads) require it, so a publish cut short at any point leaves
nothing listed or loadable, and a reader checks every file it fetches against the manifest's
sha256 (a torn read during a replace is refused, never used). Publishing over a published
folder needs `replace`: the manifest is deleted first (the folder disappears from listings),
then the old files, then the new files are written and the manifest last. Nothing outside
URL/<name>/ is touched; readers only read. One publisher per name at a time.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from saekit.base.errors import SaekitError
from saekit.base.locations import absolute_location, is_local
from saekit.base.outputs import STORE_FORMAT

MANIFEST = "saekit-published.json"
INTENT = ".saekit-publishing"
FORMAT = "saekit.published"
FORMAT_VERSION = 1
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
LIST_DEPTH = 4  # folders below URL that `entries` looks into

Source = bytes | Path  # a file's content, or the local file holding it


@dataclass(frozen=True)
class Entry:
    """Something `sae ls` lists: a published folder (its manifest) or a store (its root
    attributes), and its URL."""

    kind: str  # "sae" or "store"
    url: str
    meta: dict[str, Any]


class Destination:
    """A URL opened for publishing or reading: its filesystem and root path."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.url = absolute_location(url).rstrip("/")
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        except (ImportError, ValueError, TypeError) as error:
            raise SaekitError(f"cannot use {url}: {error}") from None
        self.root = root.rstrip("/")
        # fsspec caches filesystems and their listings per process: what another process
        # published since must be seen
        self.fs.invalidate_cache()

    def path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def url_of(self, path: str) -> str:
        """The URL a person gives for a path below the root."""
        return self.url + path[len(self.root) :]

    @contextlib.contextmanager
    def reaching(self) -> Iterator[None]:
        """Failures to reach the place as one line: any error of a remote filesystem (network,
        credentials, its own types), OS errors of a local one."""
        try:
            yield
        except SaekitError:
            raise
        except Exception as error:
            if is_local(self.url) and not isinstance(error, OSError):
                raise
            raise unreachable(self.url, error) from None

    def read_json(self, path: str) -> Any | None:
        """The JSON at `path`, or None when there is none (or it is not JSON)."""
        with self.reaching():
            try:
                return json.loads(self.fs.cat_file(path))
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError):
                return None

    def exists(self, path: str) -> bool:
        with self.reaching():
            return bool(self.fs.exists(path))

    def folders(self, path: str) -> list[str]:
        """The folders directly inside `path`, hidden ones left out."""
        with self.reaching():
            try:
                listed = self.fs.ls(path, detail=True)
            except (FileNotFoundError, NotADirectoryError):
                return []
        parent = path.rstrip("/")
        found = []
        for item in listed:
            child = item["name"].rstrip("/")
            inside = child.startswith(parent + "/") and child != parent
            hidden = child.rsplit("/", 1)[-1].startswith(".")
            if item.get("type") == "directory" and inside and not hidden:
                found.append(child)
        return found


def unreachable(url: str, error: BaseException) -> SaekitError:
    reason = " ".join(str(error).split()) or type(error).__name__
    return SaekitError(f"cannot use {url}: {reason}; check the URL and --storage-options")


def check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise SaekitError(
            f"{name!r} cannot be published as a folder name; use letters, digits, '.', '_' "
            "and '-' (e.g. --name topk-k32)"
        )


def publish(
    url: str,
    name: str,
    files: Mapping[str, Source],
    facts: Mapping[str, Any],
    replace: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """Publish `files` (relative path -> content) as URL/<name>/ with `facts` in its manifest;
    return the folder's URL. Refused before anything is written when the name is published
    and `replace` is not given, or when URL/<name> holds anything but a publish of saekit's."""
    for relative in files:
        if relative.startswith(("/", ".")) or ".." in relative.split("/") or relative == MANIFEST:
            raise SaekitError(f"cannot publish a file named {relative!r}")
    published = check_destination(url, name, replace, storage_options)
    where = Destination(url, storage_options)
    folder = where.path(name)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "published": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": {relative: _describe(source) for relative, source in sorted(files.items())},
        "facts": dict(facts),
    }
    with where.reaching():
        _write(where, f"{folder}/{INTENT}", _intent())
        if published:
            where.fs.rm_file(f"{folder}/{MANIFEST}")  # unlisted from here on
        _clear(where, folder)
        for relative, source in files.items():
            _write(where, f"{folder}/{relative}", source)
        _write(where, f"{folder}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
        where.fs.rm_file(f"{folder}/{INTENT}")
    return where.url_of(folder)


def check_destination(
    url: str, name: str, replace: bool, storage_options: Mapping[str, Any] | None = None
) -> bool:
    """Whether URL/<name> is published; refused when it is and `replace` is not given, or when
    it holds anything but a publish of saekit's (a cut-short one may be published over)."""
    check_name(name)
    where = Destination(url, storage_options)
    protocol = where.fs.protocol
    protocols = {protocol} if isinstance(protocol, str) else set(protocol)
    if protocols & {"http", "https"}:
        raise SaekitError(f"{url} is read-only (HTTP); publish to a directory or a bucket")
    folder = where.path(name)
    published = where.read_json(f"{folder}/{MANIFEST}") is not None
    if published and not replace:
        raise SaekitError(
            f"{where.url_of(folder)} is already published; pass --replace to publish over it, "
            "or choose another --name"
        )
    if not published and not where.exists(f"{folder}/{INTENT}") and _holds_anything(where, folder):
        raise SaekitError(
            f"{where.url_of(folder)} holds something else than a published SAE; choose another "
            "--name or --to"
        )
    return published


def _intent() -> bytes:
    who = {"host": platform.node(), "pid": os.getpid(), "started": datetime.now(UTC).isoformat()}
    return json.dumps(who).encode()


def _describe(source: Source) -> dict[str, Any]:
    digest = hashlib.sha256()
    if isinstance(source, bytes):
        digest.update(source)
        size = len(source)
    else:
        with source.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        size = source.stat().st_size
    return {"size": size, "sha256": digest.hexdigest()}


def _holds_anything(where: Destination, folder: str) -> bool:
    with where.reaching():
        try:
            return bool(where.fs.ls(folder))
        except (FileNotFoundError, NotADirectoryError):
            return False


def _clear(where: Destination, folder: str) -> None:
    """Remove everything in the folder but the intent file (an earlier version, or what a publish
    cut short left)."""
    try:
        children = where.fs.ls(folder, detail=False)
    except FileNotFoundError:
        return
    for child in children:
        if child.rstrip("/").rsplit("/", 1)[-1] != INTENT:
            where.fs.rm(child, recursive=True)


def _write(where: Destination, path: str, source: Source) -> None:
    """One file, whole: on a local disk written beside and renamed; elsewhere one PUT."""
    parent = path.rsplit("/", 1)[0]
    local = isinstance(where.fs, LocalFileSystem)
    if local:
        where.fs.makedirs(parent, exist_ok=True)
    target = f"{parent}/.{path.rsplit('/', 1)[1]}.partial" if local else path
    if isinstance(source, bytes):
        where.fs.pipe_file(target, source)
    else:
        where.fs.put_file(str(source), target)
    if local:
        where.fs.mv(target, path)


def read_manifest(url: str, storage_options: Mapping[str, Any] | None = None) -> dict | None:
    """The manifest of a published folder, or None when the URL holds none."""
    where = Destination(url, storage_options)
    return _manifest(where.read_json(where.path(MANIFEST)))


def _manifest(value: Any) -> dict | None:
    if isinstance(value, dict) and value.get("format") == FORMAT:
        return value
    return None


def being_published(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    """Whether a publish of this folder is under way or was cut short (and it holds no
    manifest)."""
    where = Destination(url, storage_options)
    return where.exists(where.path(INTENT)) and read_manifest(url, storage_options) is None


def entries(url: str, storage_options: Mapping[str, Any] | None = None) -> list[Entry]:
    """The published folders and the stores under `url` (itself included, down to LIST_DEPTH
    folders), from their manifests and root attributes only; hidden folders are skipped."""
    where = Destination(url, storage_options)
    if not where.exists(where.root):
        raise SaekitError(f"{url} does not exist; check the URL and --storage-options")
    found: list[Entry] = []

    def visit(path: str, depth: int) -> None:
        manifest = _manifest(where.read_json(f"{path}/{MANIFEST}"))
        if manifest is not None:
            found.append(Entry("sae", where.url_of(path), manifest))
            return
        meta = where.read_json(f"{path}/zarr.json")
        attributes = meta.get("attributes") if isinstance(meta, dict) else None
        if isinstance(attributes, dict) and attributes.get("format") == STORE_FORMAT:
            found.append(Entry("store", where.url_of(path), attributes))
            return
        if depth == LIST_DEPTH:
            return
        for child in where.folders(path):
            visit(child, depth + 1)

    visit(where.root, 0)
    return sorted(found, key=lambda entry: (entry.kind != "store", entry.url))


_fetched: dict[str, Path] = {}


def fetch(
    url: str, wanted: Sequence[str], storage_options: Mapping[str, Any] | None = None
) -> Path:
    """A local, read-only copy of the `wanted` files of a published folder (a temporary
    directory named after it, removed when the process exits), each checked against the
    manifest's size and sha256. The same URL is fetched once per process."""
    key = absolute_location(url).rstrip("/")
    if key in _fetched:
        return _fetched[key]
    where = Destination(url, storage_options)
    manifest = _manifest(where.read_json(where.path(MANIFEST)))
    if manifest is None:
        state = (
            "is being published, or its publish was cut short"
            if where.exists(where.path(INTENT))
            else "holds no published SAE (no saekit-published.json)"
        )
        raise SaekitError(f"{where.url} {state}; give the URL of a published SAE (sae ls URL)")
    directory = Path(tempfile.mkdtemp(prefix="saekit-published-")) / manifest["name"]
    atexit.register(shutil.rmtree, directory.parent, True)
    for relative in wanted:
        expected = manifest["files"].get(relative)
        if expected is None:
            raise SaekitError(f"{where.url} publishes no {relative}; it is not a saved SAE")
        size, sha256 = _download(where, where.path(relative), directory / relative)
        if (size, sha256) != (expected["size"], expected["sha256"]):
            raise SaekitError(
                f"{where.url}/{relative} does not match its manifest (replaced while being "
                "read, or damaged); read it again, or publish it again"
            )
    _fetched[key] = directory
    return directory


def _download(where: Destination, path: str, target: Path) -> tuple[int, str]:
    """Copy a file to `target`, streamed; return its size and sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with where.reaching(), where.fs.open(path, "rb") as remote, target.open("wb") as local:
        for block in iter(lambda: remote.read(1 << 24), b""):
            digest.update(block)
            size += len(block)
            local.write(block)
    return size, digest.hexdigest()

"""Where saekit may write, and what it may replace.

- Never into a store (symbolic links resolved) or a run.
- An existing `--out` is written into, or replaced, only when saekit wrote it: proven by the
  *marker* saekit writes first into every output directory it creates (`.saekit-output.json`:
  the kind of output and a random id, created new, never through a link), never by the name of
  a file that happens to be there. Outputs of an earlier saekit carry no marker; they are refused
  for replacement with a line saying what to do.
- Directories below an output (a run's `checkpoints/`, `saes/NAME/`) are created or entered only
  when they are real directories, never symbolic links (`make_directory`).
- A directory built elsewhere and moved into place is staged in a new directory of a random,
  short name beside the target (`staging_directory`), so that nothing can be planted at its name
  beforehand and a target name of any legal length still leaves room for it.
- OS errors on writes become one line naming the path and the cause (`errors.write_error`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from saekit.base.errors import SaekitError, write_error
from saekit.base.locations import local_path

STORE_FORMAT = "saekit.activation-store"  # the `format` attribute of a store's root zarr.json
MARKER_FILE = ".saekit-output.json"
MARKER_FORMAT = "saekit.output"
MARKER_MAX_BYTES = 4096
STAGING_PREFIX = ".saekit-"

# The kinds of output directories saekit writes, and how messages name them.
RUN = "train-run"
EVAL_REPORT = "eval-report"
INSPECT_SITE = "inspect-site"
RECIPE_DIR = "recipe-dir"
DEMO_DIR = "demo-dir"
TRANSCODER_SET = "transcoder-set"
KINDS = {
    RUN: "a training run",
    EVAL_REPORT: "an eval report",
    INSPECT_SITE: "an inspect site",
    RECIPE_DIR: "a recipe directory",
    DEMO_DIR: "a demo directory",
    TRANSCODER_SET: "a circuit-tracer transcoder set",
}


def enclosing_store(location: str | Path) -> Path | None:
    """The saekit store a local path is or lies inside, symbolic links resolved, or None: the
    nearest of the path and its parents whose `zarr.json` names the saekit format."""
    real = Path(os.path.realpath(local_path(location)))
    for candidate in (real, *real.parents):
        try:
            meta = json.loads((candidate / "zarr.json").read_bytes())
        except (OSError, ValueError):
            continue
        attributes = meta.get("attributes") if isinstance(meta, dict) else None
        if isinstance(attributes, dict) and attributes.get("format") == STORE_FORMAT:
            return candidate
    return None


def refuse_inside_store(out: str | Path, command: str) -> None:
    """Refuse an output (`--out`) that is or lies inside a store, symbolic links resolved: a
    store is changed by its writer only."""
    store = enclosing_store(out)
    if store is not None:
        raise SaekitError(
            f"--out {out} lies inside the store {store}; {command} never writes into a store, "
            "choose another directory"
        )


# -- markers ----------------------------------------------------------------------------------


def write_marker(directory: Path, kind: str) -> None:
    """Mark `directory` as an output of `kind` that saekit wrote (kept when already marked so).
    The marker is created new (`O_EXCL | O_NOFOLLOW`): a link planted in its place is refused."""
    if marker_kind(directory) == kind:
        return
    marker = {"format": MARKER_FORMAT, "kind": kind, "id": secrets.token_hex(8)}
    path = directory / MARKER_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as file:
            json.dump(marker, file)
            file.write("\n")
    except FileExistsError:
        raise SaekitError(
            f"{path} exists but is not saekit's marker of {KINDS[kind]}; {directory} holds "
            "something else, choose another --out"
        ) from None
    except OSError as error:
        raise write_error(path, error) from None


def marker_kind(directory: Path) -> str | None:
    """The kind of output saekit marked `directory` as, or None (no marker, a link, not ours)."""
    path = directory / MARKER_FILE
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MARKER_MAX_BYTES:
            return None
        marker = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        return None
    kind, mark = marker.get("kind"), marker.get("id")
    return kind if kind in KINDS and isinstance(mark, str) and mark else None


# -- checking an --out before anything is written ---------------------------------------------


def check_output_dir(
    out: str | Path,
    runs: Iterable[Path],
    command: str,
    kind: str,
    legacy: Callable[[Path], bool] | None = None,
) -> None:
    """Refuse `--out` when it is or lies inside one of `runs` or inside any store, is a symbolic
    link or a file, holds anything but an output of `kind` that saekit marked as its own
    (`legacy` recognises the unmarked outputs of an earlier saekit, refused with what to do), or
    cannot be written (its nearest existing folder is tried)."""
    resolved = Path(out).resolve()
    for run in runs:
        if resolved == run.resolve() or run.resolve() in resolved.parents:
            raise SaekitError(
                f"--out {out} is inside run {run}; {command} never writes into a run, choose "
                "another directory"
            )
    refuse_inside_store(out, command)
    refuse_existing_output(Path(out), kind, legacy)
    probe_writable(Path(out))


def refuse_existing_output(
    out: Path, kind: str, legacy: Callable[[Path], bool] | None = None
) -> None:
    """Refuse an existing `out` that saekit may not write into or replace as `kind`."""
    try:
        info = os.lstat(out)
    except FileNotFoundError:
        return
    except OSError as error:
        raise write_error(out, error, "use") from None
    if stat.S_ISLNK(info.st_mode):
        raise SaekitError(
            f"--out {out} is a symbolic link; saekit never writes through links, give the "
            "directory itself"
        )
    if not stat.S_ISDIR(info.st_mode):
        raise SaekitError(f"--out {out} is a file, not a directory; choose a new directory")
    found = marker_kind(out)
    if found == kind or (found is None and not any(out.iterdir())):
        return
    if found is not None:
        raise SaekitError(
            f"--out {out} holds {KINDS[found]}, not {KINDS[kind]}; choose a new directory"
        )
    if legacy is not None and legacy(out):
        raise SaekitError(
            f"--out {out} looks like {KINDS[kind]} of an earlier saekit but carries no "
            f"{MARKER_FILE} marker, so saekit cannot tell it wrote it; delete it yourself or "
            "choose a new --out"
        )
    raise SaekitError(
        f"--out {out} exists and is not {KINDS[kind]} saekit wrote (no {MARKER_FILE} marker); "
        "choose a new or empty directory"
    )


def probe_writable(out: Path) -> None:
    """Refuse, in one line, an output whose nearest existing folder cannot be written in: a
    directory of a random name is created there and removed."""
    folder = Path(os.path.abspath(out))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    longest = max((part for part in out.parts), key=lambda part: len(part.encode()))
    if len(longest.encode()) > _name_max(folder):
        raise SaekitError(
            f"--out {out}: the name {longest[:24]}... is longer than the file system allows "
            f"({_name_max(folder)} bytes); choose a shorter name"
        )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
    except OSError as error:
        raise SaekitError(
            f"cannot write --out {out}: {error.strerror or error} in {folder}; fix the "
            "permissions or choose another --out"
        ) from None


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


# -- writing below an output ------------------------------------------------------------------


def make_directory(path: Path, root: Path) -> Path:
    """Create `path` (and the folders between `root` and it); each that exists must be a real
    directory, never a symbolic link, so that nothing below an output is written elsewhere."""
    try:
        root.mkdir(parents=True, exist_ok=True)  # the output itself, where the user chose it
    except OSError as error:
        raise write_error(root, error, "create") from None
    relative = Path(os.path.relpath(path, root))
    current = root
    for part in relative.parts:
        current = current / part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            try:
                current.mkdir()
            except FileExistsError:  # made meanwhile: checked again below
                info = os.lstat(current)
            except OSError as error:
                raise write_error(current, error, "create") from None
            else:
                continue
        if stat.S_ISLNK(info.st_mode):
            raise SaekitError(
                f"{current} is a symbolic link; saekit never writes through links in what it "
                "writes: remove the link (or give a new --out)"
            )
        if not stat.S_ISDIR(info.st_mode):
            raise SaekitError(f"{current} is a file where saekit needs a directory; remove it")
    return path


def refuse_links(root: Path, paths: Iterable[str | Path]) -> None:
    """Refuse an output whose places below `root` (each of `paths`, and the folders on the way)
    is a symbolic link: what saekit writes there would land elsewhere."""
    for relative in paths:
        current = root
        for part in Path(relative).parts:
            current = current / part
            if current.is_symlink():
                raise SaekitError(
                    f"{current} is a symbolic link; saekit never writes through links in what "
                    "it writes: remove the link (or give a new --out)"
                )
            if not current.exists():
                break


def remove_directory(path: Path) -> None:
    """Remove a directory saekit wrote; a symbolic link in its place is removed itself, never
    followed (neither is any link inside: `shutil.rmtree` does not follow them)."""
    try:
        if os.path.islink(path):
            os.unlink(path)
        else:
            shutil.rmtree(path)
    except FileNotFoundError:
        pass


def staging_directory(target: Path) -> Path:
    """A new, private directory of a random short name beside `target` (`.saekit-XXXXXXXX`), to
    build something in before it is moved to `target`. Created with `mkdir`, which fails on
    anything already there, so nothing can be planted at its name."""
    try:
        return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target.parent))
    except OSError as error:
        raise write_error(target.parent, error, "write in") from None


def replace_directory(built: Path, target: Path, staging: Path, kind: str) -> None:
    """Move the directory `built` (inside `staging`) to `target`. A directory already at
    `target` is moved aside into `staging` first (removed with it by the caller), and only when
    saekit marked it as an output of `kind`."""
    if os.path.lexists(target):
        refuse_existing_output(target, kind)
        os.replace(target, staging / f"previous-{secrets.token_hex(4)}")
    os.replace(built, target)


@contextlib.contextmanager
def staged(target: Path) -> Iterator[Path]:
    """A staging directory beside `target` (see `staging_directory`), removed on the way out;
    OS errors met inside become one line naming the file and the cause."""
    staging = staging_directory(target)
    try:
        yield staging
    except OSError as error:
        raise write_error(error.filename or target, error) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)

"""Text sources as a deterministic stream of documents.

A source is a local `.txt` file (documents separated by blank lines), `.jsonl` or `.parquet`
file (text in `text_column`), a directory or glob of such files (read in sorted order), or a
Hugging Face hub dataset name (streamed with `datasets`). Nothing is loaded whole: files are read
line by line or in record batches.
"""

from __future__ import annotations

import codecs
import glob
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saekit.base.errors import SaekitError
from saekit.base.fingerprint import files_fingerprint
from saekit.base.locations import absolute_location

SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass(frozen=True)
class TextSource:
    """Where documents come from: local files, or a hub dataset (`files` is None)."""

    spec: str
    files: tuple[Path, ...] | None
    split: str
    text_column: str

    def identity(self) -> dict[str, Any]:
        """What determines the documents (a change here means different rows)."""
        if self.files is None:
            return {"dataset": self.spec, "split": self.split, "text_column": self.text_column}
        return {
            "dataset": absolute_location(self.spec),
            "text_column": self.text_column,
            "dataset_files": len(self.files),
            "dataset_fingerprint": files_fingerprint(self.files, root=_common_root(self.files)),
        }

    def check(self) -> None:
        """Read every local file once and refuse, in one line, what the harvest would meet later:
        a file that is not UTF-8 text (or holds binary data), a JSON Lines record without the
        text field, a parquet file without the text column. Called before anything is written,
        so that a store is never created for a dataset that cannot be read to its end. (A hub
        dataset is checked on its first record only: it is streamed.)"""
        for path in self.files or ():
            try:
                if path.suffix == ".txt":
                    _check_text(path)
                elif path.suffix == ".jsonl":
                    for _ in _jsonl_documents(path, self.text_column):
                        pass
                else:
                    _parquet_file(path, self.text_column)
            except OSError as error:
                raise SaekitError(f"cannot read {path}: {error.strerror or error}") from None

    def documents(self) -> Iterator[str]:
        """Every non-empty document, in a fixed order."""
        if self.files is None:
            yield from _hub_documents(self.spec, self.split, self.text_column)
            return
        for path in self.files:
            reader = {
                ".txt": _txt_documents,
                ".jsonl": _jsonl_documents,
                ".parquet": _parquet_documents,
            }[path.suffix]
            try:
                yield from (doc for doc in reader(path, self.text_column) if doc.strip())
            except OSError as error:
                raise SaekitError(f"cannot read {path}: {error.strerror or error}") from None


def _common_root(files: tuple[Path, ...]) -> Path:
    parents = {p.parent for p in files}
    return parents.pop() if len(parents) == 1 else Path("/")


def resolve_source(spec: str, split: str = "train", text_column: str = "text") -> TextSource:
    """Interpret `--dataset`: a file, a directory, a glob, or else a hub dataset name."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise SaekitError(f"{spec}: unsupported file type; use {', '.join(SUFFIXES)} files")
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise SaekitError(f"directory {spec} holds no {', '.join(SUFFIXES)} files")
    elif glob.has_magic(spec):
        files = sorted(
            Path(p)
            for p in glob.glob(str(path), recursive=True)
            if Path(p).is_file() and Path(p).suffix in SUFFIXES
        )
        if not files:
            raise SaekitError(f"no {', '.join(SUFFIXES)} files match {spec}")
    elif spec.startswith((".", "/", "~")) or path.suffix in SUFFIXES:
        raise SaekitError(f"dataset {spec} does not exist; check the path")
    else:
        return TextSource(spec, None, split, text_column)
    return TextSource(spec, tuple(files), split, text_column)


TEXT_CHECK_BYTES = 1 << 24  # read per step when checking a text file


def _check_text(path: Path) -> None:
    """Refuse a `.txt` file that is not UTF-8 text, or holds NUL bytes (binary data), naming
    the line; reads the file in blocks."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as file:
        while block := file.read(TEXT_CHECK_BYTES):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                where = line + block.count(b"\n", 0, error.start)
                raise SaekitError(f"{path}:{where} is not UTF-8 text; convert the file") from None
            nul = block.find(b"\0")
            if nul >= 0:
                where = line + block.count(b"\n", 0, nul)
                raise SaekitError(
                    f"{path}:{where} holds binary data (a NUL byte), not text; give text files"
                )
            line += block.count(b"\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise SaekitError(f"{path}:{line} is not UTF-8 text; convert the file") from None


def _txt_documents(path: Path, _column: str) -> Iterator[str]:
    lines: list[str] = []
    try:
        with path.open(encoding="utf-8") as file:
            for line in file:
                if line.strip():
                    lines.append(line.rstrip("\n"))
                elif lines:
                    yield "\n".join(lines)
                    lines = []
    except UnicodeDecodeError:
        raise SaekitError(f"{path} is not UTF-8 text; convert the file") from None
    if lines:
        yield "\n".join(lines)


def _jsonl_documents(path: Path, column: str) -> Iterator[str]:
    with path.open("rb") as file:
        for number, raw in enumerate(file, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise SaekitError(f"{path}:{number} is not UTF-8 text; convert the file") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise SaekitError(f"{path}:{number} is not valid JSON") from None
            if not isinstance(record, dict) or column not in record:
                raise SaekitError(
                    f"{path}:{number} has no '{column}' field; choose the text "
                    "field with --text-column"
                )
            yield str(record[column])


def _parquet_file(path: Path, column: str) -> Any:
    """The parquet file, refused in one line when it cannot be read or lacks the column."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid (not an OSError) for bad files
        raise SaekitError(f"cannot read {path} as parquet: {error}") from None
    if column not in parquet.schema_arrow.names:
        raise SaekitError(
            f"{path} has no column '{column}' (it has {parquet.schema_arrow.names});"
            " choose it with --text-column"
        )
    return parquet


def _parquet_documents(path: Path, column: str) -> Iterator[str]:
    parquet = _parquet_file(path, column)
    for batch in parquet.iter_batches(columns=[column], batch_size=1024):
        yield from (str(text) for text in batch.column(0).to_pylist() if text is not None)


def _hub_documents(name: str, split: str, column: str) -> Iterator[str]:
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split, streaming=True)
        rows = iter(dataset)
        first = next(rows, None)
    except Exception as error:  # network, unknown name, unknown split: all surface here
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SaekitError(
            f"cannot stream dataset {name} (split {split}) from the hub: {reason}"
        ) from None
    if first is None:
        return
    if column not in first:
        raise SaekitError(
            f"dataset {name} has no column '{column}' (it has {sorted(first)}); "
            "choose it with --text-column"
        )
    for record in itertools.chain([first], rows):
        text = record[column]
        if text and str(text).strip():
            yield str(text)


def shuffled(items: Iterable[str], seed: int, buffer_size: int = 10_000) -> Iterator[str]:
    """A seeded streaming shuffle: each item leaves a buffer of `buffer_size` at a random slot."""
    rng = np.random.default_rng(seed)
    buffer: list[str] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        slot = int(rng.integers(buffer_size))
        yield buffer[slot]
        buffer[slot] = item
    for index in rng.permutation(len(buffer)):
        yield buffer[index]

"""Text sources and the packing rule."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saekit.base.errors import SaekitError
from saekit.harvest.contexts import Packing, context_stream, pack
from saekit.harvest.sources import resolve_source, shuffled

DOCS = ["first document\nwith two lines", "second one", "third, the last"]


def write_all_formats(root):
    (root / "a.txt").write_text("\n\n".join(DOCS[:2]) + "\n\n\n")
    (root / "b.jsonl").write_text(
        "\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(DOCS)) + "\n"
    )
    pq.write_table(pa.table({"body": DOCS, "n": [1, 2, 3]}), root / "c.parquet")


def test_txt_documents_are_separated_by_blank_lines(tmp_path):
    write_all_formats(tmp_path)
    assert list(resolve_source(str(tmp_path / "a.txt")).documents()) == DOCS[:2]


@pytest.mark.parametrize("name", ["b.jsonl", "c.parquet"])
def test_records_with_a_text_column(tmp_path, name):
    write_all_formats(tmp_path)
    source = resolve_source(str(tmp_path / name), text_column="body")
    assert list(source.documents()) == DOCS


def test_directory_and_glob_read_files_in_sorted_order(tmp_path):
    write_all_formats(tmp_path)
    (tmp_path / "notes.md").write_text("ignored: not a supported file type")
    directory = resolve_source(str(tmp_path), text_column="body")
    assert [p.name for p in directory.files] == ["a.txt", "b.jsonl", "c.parquet"]
    assert list(directory.documents()) == DOCS[:2] + DOCS + DOCS
    matched = resolve_source(str(tmp_path / "*.jsonl"), text_column="body")
    assert list(matched.documents()) == DOCS


def test_hub_dataset_streams_through_datasets(monkeypatch):
    import datasets

    calls = {}

    def fake_load_dataset(name, split, streaming):
        calls.update(name=name, split=split, streaming=streaming)
        return iter([{"content": d} for d in DOCS])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    source = resolve_source("someone/corpus", split="validation", text_column="content")
    assert source.files is None and source.identity()["split"] == "validation"
    assert list(source.documents()) == DOCS
    assert calls == {"name": "someone/corpus", "split": "validation", "streaming": True}
    with pytest.raises(SaekitError, match="no column 'text'"):
        list(resolve_source("someone/corpus").documents())


def test_unreachable_hub_dataset_is_one_clear_line():
    with pytest.raises(SaekitError, match="cannot stream dataset nobody/nothing") as error:
        list(resolve_source("nobody/nothing").documents())
    assert "\n" not in str(error.value)


def test_bad_sources(tmp_path):
    write_all_formats(tmp_path)
    with pytest.raises(SaekitError, match="has no 'text' field"):
        list(resolve_source(str(tmp_path / "b.jsonl")).documents())
    with pytest.raises(SaekitError, match="no column 'text'"):
        list(resolve_source(str(tmp_path / "c.parquet")).documents())
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SaekitError, match=r"cannot read .*broken\.parquet"):
        list(resolve_source(str(tmp_path / "broken.parquet")).documents())
    with pytest.raises(SaekitError, match="does not exist"):
        resolve_source(str(tmp_path / "missing.txt"))
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(SaekitError, match="unsupported file type"):
        resolve_source(str(tmp_path / "notes.md"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SaekitError, match="holds no"):
        resolve_source(str(tmp_path / "empty"))


def test_shuffle_is_a_seeded_permutation():
    items = [str(i) for i in range(1000)]
    a = list(shuffled(items, seed=1, buffer_size=64))
    assert sorted(a) == sorted(items) and a != items
    assert a == list(shuffled(items, seed=1, buffer_size=64))
    assert a != list(shuffled(items, seed=2, buffer_size=64))


class CharTokenizer:
    """One token per character; 0 is BOS/EOS."""

    bos_token_id = eos_token_id = 0

    def __call__(self, texts, add_special_tokens, verbose):
        return {"input_ids": [[ord(c) for c in text] for text in texts]}


def test_packing_rule():
    packing = Packing(context_size=4, bos_id=0, separator_id=0)
    contexts = list(pack(iter([[1, 2, 3, 4], [5, 6]]), packing))
    # stream: 1 2 3 4 EOS 5 6 EOS; contexts take 3 tokens each after BOS; the rest is dropped
    assert [c.tolist() for c in contexts] == [[0, 1, 2, 3], [0, 4, 0, 5]]


def test_training_contexts_start_at_a_fresh_document():
    packing = Packing(context_size=5, bos_id=0, separator_id=0)
    docs = ["abcdefg", "hijk", "lmnopqrstu"]
    contexts = [c.tolist() for c in context_stream(docs, CharTokenizer(), packing, holdout=1)]
    assert contexts[0] == [0, *map(ord, "abcd")], "held-out context"
    assert contexts[1] == [0, *map(ord, "hijk")], "training resumes at the next document"
    assert all(ord("e") not in c for c in contexts[1:]), "no held-out document in training"
    assert np.all([len(c) == 5 for c in contexts])

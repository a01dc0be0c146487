"""The format document's plain-zarr recipe runs as written and reads the right values."""

import re
from pathlib import Path

import numpy as np

from saekit.cache_format import ActivationStore, HookSpec
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store

DOC = Path(__file__).parent.parent / "docs" / "cache-format.md"


def test_plain_zarr_recipe(tmp_path, monkeypatch):
    recipe = re.search(r"## Read it with plain zarr\n+```python\n(.*?)```", DOC.read_text(), re.S)
    assert recipe, "the recipe is in the document"
    code = recipe.group(1)
    assert len(code.strip().splitlines()) <= 6
    spec = synthetic_spec(2048, hooks={"blocks.7.hook_resid_post": HookSpec(d=32)})
    write_synthetic_store(tmp_path / "store.zarr", spec)
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(code, names)
    truth = ActivationStore.open(tmp_path / "store.zarr").read_tensors(
        ["activations", "gradients"], 0, 2048
    )
    np.testing.assert_array_equal(names["acts"].astype(np.float32), truth["activations"].numpy())
    np.testing.assert_allclose(names["grads"], truth["gradients"].numpy(), rtol=0, atol=0)

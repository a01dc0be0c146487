"""The loss added estimated from the store's gradients (`sae eval`, no LM run): the hand
computation from the stored arrays, and agreement with the online loss added where the second-order
expansion holds (a small shift of every activation; a small linear distortion)."""

import json

import numpy as np
import pytest
import torch
import zarr

from helpers import harvest_small_store, relu_sae, save
from saekit.cache_format import ActivationStore
from saekit.evaluate import EvalRequest, evaluate

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def lm_store(tiny_lm, corpus, tmp_path_factory):
    """A float32 store of the tiny LM (gradients kept), 960 held-out tokens in 30 contexts."""
    out = tmp_path_factory.mktemp("estimate") / "store.zarr"
    return harvest_small_store(tiny_lm, corpus, out, dtype="float32")


def distortion(d, matrix_DD, shift_D):
    """An SAE with x̂ = M x + s exactly: f = ReLU([x + s'; −x − s']), x̂ = M (f⁺ − f⁻) with
    s' = M⁻¹ s."""
    inner = torch.linalg.solve(matrix_DD, shift_D)
    eye = torch.eye(d)
    return relu_sae(
        d, 2 * d, torch.cat([eye, -eye]), torch.cat([matrix_DD, -matrix_DD], dim=1),
        b_enc=torch.cat([inner, -inner]),
    )  # fmt: skip


def evaluated(lm_store, tmp_path, saes, online=True):
    run = tmp_path / "run"
    for name, sae in saes.items():
        save(run, name, sae, lm_store)
    out = tmp_path / "report"
    evaluate(EvalRequest(runs=(str(run),), out=str(out), device="cpu", online=online))
    report = json.loads((out / "report.json").read_text())
    return {row["name"]: row for row in report["rows"]}


@pytest.fixture(scope="module")
def rows(lm_store, tmp_path_factory):
    """A shift of every activation by ε·u (ε 0.003: first order; 0.3: far beyond) and linear
    distortions x̂ = (I + εR) x (ε 0.01 and 0.1), evaluated offline and online."""
    d = ActivationStore.open(lm_store).spec.hooks[HOOK].d
    generator = torch.Generator().manual_seed(0)
    u_D = torch.randn(d, generator=generator)
    r_DD = torch.randn(d, d, generator=generator) / d**0.5
    saes = {
        "shift-small": distortion(d, torch.eye(d), 0.003 * u_D),
        "shift-large": distortion(d, torch.eye(d), 0.3 * u_D),
        "mix-small": distortion(d, torch.eye(d) + 0.01 * r_DD, torch.zeros(d)),
        "mix-large": distortion(d, torch.eye(d) + 0.1 * r_DD, torch.zeros(d)),
    }
    return evaluated(lm_store, tmp_path_factory.mktemp("estimate-eval"), saes), u_D, r_DD


def test_the_estimate_is_the_hand_computation_from_the_stored_arrays(lm_store, rows):
    by_name, u_D, r_DD = rows
    group = zarr.open_group(str(lm_store), mode="r")  # the store as plain zarr (float32)
    held_out = group.attrs["layout"]["holdout_rows"]
    x = group[f"hooks/{HOOK}/activations"][:held_out].astype(np.float64)
    g = group[f"hooks/{HOOK}/gradients"][:held_out].astype(np.float64)
    position = group["position"][:held_out]
    spliced = position > 0  # position 0 is never replaced
    predictions = int(((position > 0) & (position < 31)).sum())  # what online averages over
    for name, delta in (
        ("shift-small", np.broadcast_to(0.003 * u_D.double().numpy(), x.shape)),
        ("mix-large", 0.1 * x @ r_DD.double().numpy().T),
    ):
        change = (g * delta).sum(axis=1)[spliced]
        offline = by_name[name]["offline"]
        first, kl = change.sum() / predictions, (change**2).sum() / (2 * predictions)
        assert offline["loss_added_first_order"] == pytest.approx(first, rel=1e-4)
        assert offline["kl_estimate"] == pytest.approx(kl, rel=1e-4)
        assert offline["loss_added_estimate"] == pytest.approx(first + kl, rel=1e-4)


def test_a_small_change_adds_the_first_order_loss_the_gradients_predict(rows):
    by_name, _, _ = rows
    small = by_name["shift-small"]
    online = small["online"]["loss_added"]
    assert abs(online) > 1e-4, "a change the LM's loss feels"
    assert small["offline"]["loss_added_first_order"] == pytest.approx(online, rel=0.05), (
        "the stored gradient is that of the summed loss, averaged as sae eval averages"
    )


def test_the_fisher_term_estimates_the_kl_while_the_change_is_small(rows):
    by_name, _, _ = rows
    for name in ("mix-small", "mix-large"):
        row = by_name[name]
        assert row["offline"]["kl_estimate"] == pytest.approx(row["online"]["kl"], rel=0.25), name
    large = by_name["shift-large"]
    assert large["offline"]["kl_estimate"] > 3 * large["online"]["kl"], (
        "far beyond the quadratic regime the estimate is not to be trusted (docs/cli.md)"
    )

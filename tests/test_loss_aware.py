"""The loss-aware training option (`loss_aware=w`): the term against a hand computation, weight 0
reproducing plain training bit for bit, every variant and a transcoder training with it, and the
trade it makes on a planted store: less loss-relevant error for some more plain error."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import assert_one_line_error
from planted import HOOK, SOURCE, TARGET, write_layered_store, write_planted_store
from saekit.cache_format import ActivationStore
from saekit.cache_format.schema import ACTIVATIONS, GRADIENTS, hook_field
from saekit.train import (
    METRICS_FILE,
    TrainRequest,
    TrainSettings,
    load_sae,
    parse_spec,
    read_metrics,
    train,
)
from saekit.train.losses import LossAware, SquaredError, with_loss_aware
from saekit.train.variants import VARIANTS
from train_helpers import build

D, ATOMS, ACTIVE = 16, 48, 4


def test_the_term_is_the_hand_computation():
    # y = [[1, 0], [0, 1], [2, 2]] (mean [1, 1]), ŷ = y + [[1, 0], [0, 0], [0, 1]],
    # g = [[1, 1], [2, 0], [0, 3]]
    y = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    y_hat = y + torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    forward = SimpleNamespace(y_BE=y, y_hat_BE=y_hat, g_BE=g)
    # gᵀ(ŷ − y) = [1, 0, 3]: Σ² = 10; y − ȳ = [[0, −1], [−1, 0], [1, 1]], so
    # gᵀ(y − ȳ) = [−1, −2, 3]: Σ² = 14; mean ‖y − ȳ‖² = (1 + 1 + 2) / 3
    term = LossAware()(None, forward, None)
    assert float(term) == pytest.approx(10 / 14)
    scaled = LossAware(squared_error_units=True)(None, forward, None)
    assert float(scaled) == pytest.approx(10 / 14 * 4 / 3)
    assert float(LossAware()(None, SimpleNamespace(y_BE=y, y_hat_BE=y, g_BE=g), None)) == 0


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_takes_the_term_in_the_units_of_its_reconstruction_loss(variant):
    sae = build(f"{variant}:latents=32,loss_aware=0.5", 8)
    terms = with_loss_aware(sae.activation.loss_terms(), sae.activation.options.loss_aware)
    (term,) = [t for t in terms if isinstance(t, LossAware)]
    squared = any(isinstance(t, SquaredError) for t in terms)
    assert term.coefficient == 0.5 and term.squared_error_units == squared
    plain = build(f"{variant}:latents=32", 8)
    assert with_loss_aware(plain.activation.loss_terms(), 0.0) == plain.activation.loss_terms()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("loss-aware")
    write_planted_store(root / "store.zarr", 16384, ATOMS, D, ACTIVE, readout_rank=4)
    return root


def run(root, out, specs, tokens=65536, store="store.zarr"):
    request = TrainRequest(
        store=str(root / store),
        hook=None,
        out=root / out,
        specs=[parse_spec(text) for text in specs],
        settings=TrainSettings(tokens=tokens, batch_size=256, checkpoint_every=0, log_every=32),
    )
    return train(request)


def weights(result, name):
    return load_file(result.sae_dirs[name] / "sae.safetensors")


def test_weight_zero_is_plain_training_bit_for_bit(planted):
    plain = run(planted, "plain", ["topk:k=2,latents=32"])
    zero = run(planted, "zero", ["topk:k=2,latents=32,loss_aware=0"])
    beside = run(planted, "beside", ["topk:k=2,latents=32", "topk:k=2,latents=32,loss_aware=1"])
    (name,) = plain.sae_dirs
    assert set(zero.sae_dirs) == {name}, "weight 0 is the default: the same SAE, the same name"
    for other in (zero, beside):
        a, b = weights(plain, name), weights(other, name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "loss/loss_aware" not in plain.final_metrics[name]
    assert (
        "loss/loss_aware"
        in beside.final_metrics[parse_spec("topk:k=2,latents=32,loss_aware=1").resolve(D).name]
    )


def fisher_and_plain_error(planted, result, name, rows=4096):
    """(Σ (gᵀδ)² / Σ (gᵀ(x − x̄))², Σ‖δ‖² / Σ‖x − x̄‖²) of the saved SAE on the store's rows."""
    store = ActivationStore.open(planted / "store.zarr")
    read = store.read_tensors([hook_field(ACTIVATIONS, HOOK), hook_field(GRADIENTS, HOOK)], 0, rows)
    x, g = read[hook_field(ACTIVATIONS, HOOK)].double(), read[hook_field(GRADIENTS, HOOK)].double()
    sae = load_sae(result.sae_dirs[name]).double()
    with torch.no_grad():
        delta = sae.output(x, sae.activation.encode(sae, x, None).to_dense()) - x
    centred = x - x.mean(0)
    fisher = (g * delta).sum(1).pow(2).sum() / (g * centred).sum(1).pow(2).sum()
    return float(fisher), float(delta.pow(2).sum() / centred.pow(2).sum())


@pytest.mark.slow  # three training runs of the planted store
def test_the_term_trades_plain_error_for_loss_relevant_error(planted):
    """At k = 2 of 4 planted atoms per row an SAE cannot reconstruct everything; the loss reads
    a 4-dimensional subspace of the 16: the loss-aware SAE keeps what the loss depends on."""
    specs = {"plain": "topk:k=2,latents=64", "aware": "topk:k=2,latents=64,loss_aware=3"}
    result = run(planted, "trade", list(specs.values()), tokens=131072)
    names = {key: parse_spec(text).resolve(D).name for key, text in specs.items()}
    plain = fisher_and_plain_error(planted, result, names["plain"])
    aware = fisher_and_plain_error(planted, result, names["aware"])
    assert aware[0] < 0.7 * plain[0], (aware, plain)
    assert aware[1] > plain[1], (aware, plain)


@pytest.mark.slow  # one run of every variant and a transcoder
def test_every_variant_and_a_transcoder_train_with_the_term(tmp_path):
    write_layered_store(tmp_path / "layered.zarr", 8192, ATOMS, D, ACTIVE)
    target = TARGET.format(1)
    specs = [
        f"{variant}:latents=32,loss_aware=1,hooks={target}" for variant in sorted(VARIANTS)
    ] + [f"topk:k=4,latents=32,loss_aware=1,hooks={SOURCE.format(1)},target={target},skip=true"]
    result = run(tmp_path, "every", specs, tokens=16384, store="layered.zarr")
    metrics = read_metrics(result.run_dir / METRICS_FILE)
    for name in result.sae_dirs:
        curve = [m["loss/loss_aware"] for m in metrics if m.get("sae") == name]
        assert curve and all(np.isfinite(curve)), name
        assert curve[-1] < curve[0], (name, curve[0], curve[-1])


def test_a_store_without_gradients_is_refused_in_one_line(run_cli, tmp_path):
    write_layered_store(tmp_path / "layered.zarr", 2048, ATOMS, D, ACTIVE)
    source = SOURCE.format(0)  # the layered store keeps no gradients at its sources
    result = run_cli(
        "train", "--store", tmp_path / "layered.zarr", "--hook", source, "--out", tmp_path / "r",
        "--sae", "topk:k=4,latents=32,loss_aware=1", "--tokens", "1024",
    )  # fmt: skip
    assert_one_line_error(result, "has no gradients for", source, "loss_aware")
    assert not (tmp_path / "r").exists()

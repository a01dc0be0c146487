"""Planted-dictionary recovery: SAEs trained from a store find the atoms the data was made of."""

import pytest
import torch

from planted import recovered_fraction, write_planted_store
from saekit.train import TrainRequest, TrainSettings, load_sae, parse_spec, train

pytestmark = pytest.mark.slow  # trains three SAEs to convergence on a planted dictionary

ATOMS, D, ACTIVE = 48, 32, 3
SPECS = {
    "topk": "topk:k=3,latents=64",
    "batchtopk": "batchtopk:k=3,latents=64",
    "gsae": "gsae:k=3,latents=64,beta_eff=0.3",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The three SAEs trained together, 8 epochs of 16k rows (512 steps of 256)."""
    root = tmp_path_factory.mktemp("planted")
    atoms = write_planted_store(root / "store.zarr", 16384, ATOMS, D, ACTIVE)
    request = TrainRequest(
        store=str(root / "store.zarr"),
        hook=None,
        out=root / "run",
        specs=[parse_spec(text) for text in SPECS.values()],
        settings=TrainSettings(tokens=131072, batch_size=256, checkpoint_every=0, log_every=64),
    )
    result = train(request)
    return atoms, result


@pytest.mark.parametrize("variant", SPECS)
def test_most_planted_atoms_are_recovered(trained, variant):
    atoms, result = trained
    (name,) = [n for n in result.sae_dirs if n.startswith(variant + "-")]
    sae = load_sae(result.sae_dirs[name])
    assert recovered_fraction(atoms, sae.W_dec, cosine=0.9) >= 0.85
    assert result.final_metrics[name]["nmse"] < 0.15


def test_an_untrained_sae_recovers_nothing(trained):
    atoms, _ = trained
    random_decoder = torch.nn.functional.normalize(torch.randn(D, 64), dim=0)
    assert recovered_fraction(atoms, random_decoder, cosine=0.9) == 0

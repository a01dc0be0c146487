"""Dictionaries of every shape: transcoders, skip transcoders, crosscoders, cross-layer
transcoders and Matryoshka SAEs — their products and losses by hand on tiny tensors, recovery of
a planted layered model, several shapes in one run equal to separate runs, and bad specs."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import assert_one_line_error
from planted import LAYERS, SOURCE, TARGET, write_layered_store
from saekit.train import TrainRequest, TrainSettings, load_sae, parse_spec, train
from saekit.train.losses import L1Penalty, normalised_mse
from saekit.train.shape import Block, Shape
from saekit.train.sparse import DenseCode, SparseCode, SparsePattern
from saekit.train.variants.matryoshka import PrefixNMSE, prefix
from train_helpers import context

D, ATOMS, ACTIVE = 16, 24, 2


def shape(sources, targets, skip=False, layers=None):
    return Shape(
        tuple(Block(h, D) for h in sources), tuple(Block(h, D) for h in targets), skip, layers
    )


def random_(module, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return module


# -- the products, by hand ------------------------------------------------------------------------


def test_a_skip_transcoder_reads_its_input_and_predicts_its_target():
    spec = parse_spec("relu:latents=8,hooks=a,target=b,skip=true").resolve(D)
    tc = random_(spec.build(shape(["a"], ["b"], skip=True)))
    x = torch.randn(5, D)
    z = (x - tc.b_in) @ tc.W_enc.T + tc.b_enc  # its own input bias, not b_dec
    f = z.relu()
    expected = f @ tc.W_dec.T + tc.b_dec + x @ tc.W_skip.T
    torch.testing.assert_close(tc.encode(x), f)
    torch.testing.assert_close(tc(x), expected)
    fwd = tc.training_forward(x, None, y_BE=torch.zeros(5, D))
    torch.testing.assert_close(fwd.y_hat_BE, expected)
    assert set(dict(tc.named_parameters())) == {
        "W_enc",
        "b_enc",
        "W_dec",
        "b_dec",
        "b_in",
        "W_skip",
    }


def test_a_crosscoder_weighs_its_l1_by_the_sum_of_its_per_hook_decoder_norms():
    """Lindsey et al.: the sparsity term of latent i is f_i Σ_l ‖d_i^l‖, not f_i ‖d_i‖."""
    spec = parse_spec("relu:latents=6,hooks=a+b").resolve(D)
    xc = random_(spec.build(shape(["a", "b"], ["a", "b"])))
    x = torch.randn(4, 2 * D)
    fwd = xc.training_forward(x)
    weights = xc.W_dec[:D].norm(dim=0) + xc.W_dec[D:].norm(dim=0)
    expected = (fwd.code.to_dense() * weights).sum(1).mean()
    torch.testing.assert_close(L1Penalty()(xc, fwd, context(xc)), expected)
    assert not torch.allclose(weights, xc.decoder_norms()), "not the norm of the whole column"
    torch.testing.assert_close(fwd.x_cent_BD, x - xc.b_dec, msg="centred by its own b_dec")


def test_a_cross_layer_transcoder_decodes_each_layer_into_every_later_one():
    """ŷ_t = Σ_{l ≤ t} W_dec_{l→t} f_l + b_dec_t, against a loop over (source, target) pairs, for
    dense and sparse codes; the gathered pre-activations and the g-SAE key likewise."""
    layers = (0, 1, 2)
    sources, targets = [f"s{i}" for i in layers], [f"t{i}" for i in layers]
    spec = parse_spec("topk:k=3,latents=5,layers=0-2").resolve(D)
    clt = random_(spec.build(shape(sources, targets, layers=layers)))
    g = clt.group
    x = torch.randn(4, 3 * D)
    z_hand = (
        torch.cat(
            [
                (x[:, i * D : (i + 1) * D] - clt.b_in[i * D : (i + 1) * D]) @ clt.W_enc[i].T
                for i in layers
            ],
            dim=1,
        )
        + clt.b_enc
    )
    torch.testing.assert_close(clt.pre_activations(x), z_hand)
    kept = clt.top_k(z_hand, 2)
    per_layer = torch.zeros(4, 3).index_put_(
        (kept.row_N, torch.div(kept.latent_N, g, rounding_mode="floor")),
        torch.ones(kept.nnz),
        accumulate=True,
    )
    assert torch.equal(per_layer, torch.full((4, 3), 2.0)), "a CLT's top-k is k per layer"
    for layer in layers:
        group = z_hand[:, layer * g : (layer + 1) * g]
        chosen = kept.latent_N.view(4, -1)[:, 2 * layer : 2 * layer + 2] - layer * g
        assert torch.equal(chosen.sort(1).values, group.topk(2, 1).indices.sort(1).values)
    f = torch.randn(4, 3 * g).relu()
    y_hand = torch.zeros(4, 3 * D)
    for source in layers:
        for target in range(source, 3):
            rows = slice((target - source) * D, (target - source + 1) * D)
            block = clt.W_dec[source][rows]  # [D, g]: source's latents into target
            y_hand[:, target * D : (target + 1) * D] += (
                f[:, source * g : (source + 1) * g] @ block.T
            )
    y_hand += clt.b_dec
    torch.testing.assert_close(clt.decode(f), y_hand)
    pattern = SparsePattern.from_mask(f > 0)
    sparse = SparseCode(pattern, pattern.take(f))
    torch.testing.assert_close(clt.decode_code(sparse), y_hand)
    z = clt.pre_activations(x)
    gathered = clt.gather_pre_activations(clt.centre(x), z.detach(), pattern)
    torch.testing.assert_close(gathered, pattern.take(z))
    gathered.sum().backward()
    assert clt.W_enc.grad is not None and clt.W_enc.grad.abs().sum() > 0
    gradients = torch.randn(4, 3 * D)
    key_hand = torch.cat([(gradients[:, i * D :] @ clt.W_dec[i]).abs() for i in layers], dim=1)
    torch.testing.assert_close(clt.loss_sensitivity(gradients), key_hand)
    norms = torch.cat([clt.W_dec[i].norm(dim=0) for i in layers])
    torch.testing.assert_close(clt.decoder_norms(), norms)
    clt.normalise_decoder_()
    torch.testing.assert_close(clt.decoder_norms(), torch.ones(3 * g))


def test_matryoshka_sums_the_nmse_of_every_prefix():
    spec = parse_spec("matryoshka:k=2,latents=8,groups=2+2+4").resolve(D)
    assert spec.options.widths == (2, 4, 8)
    sae = random_(spec.build(D))
    x = torch.randn(6, D)
    fwd = sae.training_forward(x)
    f = fwd.code.to_dense()
    expected = sum(
        normalised_mse(x, (f * (torch.arange(8) < w)) @ sae.W_dec.T + sae.b_dec) for w in (2, 4, 8)
    )
    torch.testing.assert_close(PrefixNMSE(widths=(2, 4, 8))(sae, fwd, context(sae)), expected)
    torch.testing.assert_close(
        prefix(DenseCode(f), 4).to_dense(), f * (torch.arange(8) < 4), msg="prefix of a code"
    )
    default = parse_spec("matryoshka:k=2,latents=64").resolve(D).options
    assert default.widths == (4, 8, 16, 32, 64), "1/16, 1/8, 1/4, 1/2 and all by default"


# -- training from a store ------------------------------------------------------------------------

TC = f"topk:k={ACTIVE},latents=32,hooks={SOURCE.format(0)},target={TARGET.format(0)}"
SPECS = {
    "transcoder": TC,
    "skip": TC + ",skip=true",
    "crosscoder": (
        f"crosscoder:k={2 * ACTIVE},latents=64,hooks={SOURCE.format(1)}+{SOURCE.format(2)}"
    ),
    "clt": f"clt:k={ACTIVE},latents=32,layers=0-{LAYERS - 1}",
    "matryoshka": f"matryoshka:k={ACTIVE},latents=32,groups=8+8+16,hooks={SOURCE.format(2)}",
    "sae": f"topk:k={ACTIVE},latents=32,hooks={SOURCE.format(2)}",
}


@pytest.fixture(scope="module")
def layered(tmp_path_factory):
    root = tmp_path_factory.mktemp("layered")
    atoms = write_layered_store(root / "store.zarr", 16384, ATOMS, D, ACTIVE, holdout=1024)
    return root, atoms


def run(root, out, specs, tokens=131072):
    request = TrainRequest(
        store=str(root / "store.zarr"),
        hook=None,
        out=root / out,
        specs=[parse_spec(text) for text in specs],
        settings=TrainSettings(tokens=tokens, batch_size=256, checkpoint_every=0, log_every=32),
    )
    return train(request)


@pytest.fixture(scope="module")
def together(layered):
    root, _ = layered
    return run(root, "together", SPECS.values())


@pytest.mark.slow
def test_every_shape_learns_the_planted_layered_model(layered, together):
    """The layered model is exactly what each shape can represent: each reaches a low NMSE on
    what it reconstructs, the skip transcoder far below the plain one (the target has a dense
    linear part only a skip path can carry), and the transcoder's decoder finds the atoms its
    layer writes."""
    _, atoms = layered
    nmse = {kind: together.final_metrics[_name(together, kind)]["nmse"] for kind in SPECS}
    assert nmse["skip"] < 0.1 and nmse["skip"] < 0.5 * nmse["transcoder"], nmse
    assert nmse["clt"] < 0.25, nmse
    assert nmse["crosscoder"] < 0.2 and nmse["sae"] < 0.1 and nmse["matryoshka"] < 0.2, nmse
    transcoder = load_sae(together.sae_dirs[_name(together, "transcoder")])
    # layer 0's target is linear in its codes: y = c (write_0_0 + read_0 skip_0ᵀ) (+ noise)
    effective = atoms["write_0_0"] + atoms["read_0"] @ atoms["skip_0"].T
    effective /= np.linalg.norm(effective, axis=1, keepdims=True)
    columns = torch.nn.functional.normalize(transcoder.W_dec.detach().double(), dim=0)
    best = (torch.from_numpy(effective) @ columns).max(dim=1).values
    assert float((best > 0.9).double().mean()) >= 0.8, best


@pytest.mark.slow
def test_several_shapes_in_one_run_equal_separate_runs_bit_for_bit(layered, together):
    root, _ = layered
    for kind in ("transcoder", "clt", "matryoshka"):
        alone = run(root, f"alone-{kind}", [SPECS[kind]])
        name = _name(alone, kind)
        a = load_file(alone.sae_dirs[name] / "sae.safetensors")
        b = load_file(together.sae_dirs[name] / "sae.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), kind


@pytest.mark.slow
def test_a_saved_dictionary_loads_with_its_shape_and_folded_scales(layered, together):
    """The saved dictionary takes raw activations: on raw store rows its reconstruction error
    matches what training logged on scaled rows (NMSE does not depend on the scale)."""
    root, _ = layered
    from saekit.cache_format import ActivationStore

    store = ActivationStore.open(root / "store.zarr")
    clt = load_sae(together.sae_dirs[_name(together, "clt")])
    assert clt.cfg.sources == tuple(SOURCE.format(i) for i in range(LAYERS))
    assert clt.cfg.targets == tuple(TARGET.format(i) for i in range(LAYERS))
    rows = store.read_tensors(
        [f"activations@{h}" for h in (*clt.cfg.sources, *clt.cfg.targets)], 1024, 5120
    )
    x = torch.cat([rows[f"activations@{h}"] for h in clt.cfg.sources], dim=1)
    y = torch.cat([rows[f"activations@{h}"] for h in clt.cfg.targets], dim=1)
    with torch.no_grad():
        nmse = float(normalised_mse(y, clt(x)))
    assert nmse == pytest.approx(together.final_metrics[clt.cfg.name]["nmse"], abs=0.05)


def _name(result, kind):
    (name,) = [n for n in result.sae_dirs if n == parse_spec(SPECS[kind]).resolve(D).name]
    return name


# -- bad specs ----------------------------------------------------------------------------------


def test_bad_shapes_are_one_line_and_write_nothing(layered, run_cli, tmp_path):
    root, _ = layered
    store, out = root / "store.zarr", tmp_path / "run"
    cases = [
        (f"topk:k=2,hooks={SOURCE.format(1)},target=blocks.9.hook_mlp_out", "lacks"),
        ("clt:k=2,latents=8,layers=0-5", "blocks.3.hook_resid_mid"),
        ("clt:k=2,latents=8", "needs layers="),
        ("topk:k=2,skip=true", "skip=true needs a target"),
        ("topk:k=2,layers=0-1,target=x", "cross-layer transcoder"),
        ("topk:k=2,layers=3-1", "runs backwards"),
        ("matryoshka:k=2,latents=32,groups=8+8", "add up to latents=32"),
        ("topk:k=2", "names no hook"),
    ]
    for spec, fragment in cases:
        result = run_cli("train", "--store", store, "--out", out, "--sae", spec)
        assert_one_line_error(result, fragment)
        assert not out.exists()
    assert np.all([True])

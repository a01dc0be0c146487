"""Hand-computed cases for every variant's selection, inference mode and loss terms."""

import copy
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import save
from saekit.base import devices
from saekit.base.errors import SaekitError
from saekit.train.export import load_sae
from saekit.train.losses import AuxK, AuxZipf, L1Penalty
from saekit.train.member import Member
from saekit.train.schedule import Plan
from saekit.train.spec import parse_spec
from saekit.train.thresholds import WindowedEMA
from saekit.train.usage import LatentUsage
from saekit.train.variants import VARIANTS
from saekit.train.variants.batchtopk import top_of_batch
from saekit.train.variants.jumprelu import jump_relu, step
from saekit.train.zipf import capacities, fit_zipf, zipf_expectation, zipf_weights
from train_helpers import build, context, identity_sae, loss_term

# -- TopK ------------------------------------------------------------------------------------------


def test_topk_keeps_the_k_largest_and_relus_them():
    sae = identity_sae("topk:k=2,latents=4", 4)
    x = torch.tensor([[3.0, -1.0, 2.0, 0.5], [0.1, 0.4, 0.3, 0.2], [-1.0, -2.0, -0.5, -3.0]])
    expected = torch.tensor([[3.0, 0, 2.0, 0], [0, 0.4, 0.3, 0], [0, 0, 0, 0]])
    assert torch.equal(sae.encode(x), expected)
    fwd = sae.training_forward(x)
    assert torch.equal(fwd.code.to_dense(), expected)
    assert torch.equal(fwd.y_hat_BE, expected)  # W_dec = I, b_dec = 0
    assert fwd.code.l0_B().tolist() == [2, 2, 0]


# -- BatchTopK / Mutual Choice ------------------------------------------------------------------


def test_batchtopk_spends_exactly_k_times_b_across_the_batch():
    sae = identity_sae("mutual-choice:k=2,latents=4", 4)
    assert sae.activation.name == "batchtopk"
    x = torch.tensor([[5.0, 4.0, 3.0, 2.0], [1.0, 0.5, -1.0, -2.0], [0.2, 0.1, 6.0, 0.05]])
    code = sae.training_forward(x).code
    assert int(code.l0_B().sum()) == 2 * 3, "the budget is k·B"
    assert code.l0_B().tolist() == [4, 1, 1], "the budget flows to the tokens that need it"
    assert torch.equal(code.to_dense(), torch.tensor([[5.0, 4, 3, 2], [1, 0, 0, 0], [0, 0, 6, 0]]))
    assert float(sae.activation.threshold.value) == 1.0, "θ starts at the smallest selection"


def test_batchtopk_inference_thresholds_each_token_alone_and_batch_mode_selects():
    sae = identity_sae("batchtopk:k=1,latents=3", 3)
    sae.training_forward(torch.tensor([[2.0, 1.0, 0.0], [4.0, 0.0, 0.0]]))  # smallest: 2
    sae.training_forward(torch.tensor([[0.0, 5.0, 3.0], [0.0, 0.0, 4.0]]))  # smallest: 4
    theta = 4.0  # two batches seen: the window (a tenth of them) holds only the latest
    assert float(sae.activation.threshold.value) == pytest.approx(theta)
    x = torch.tensor([[3.0, 4.5, 1.0], [2.0, 2.5, 5.0]])
    assert torch.equal(sae.encode(x), torch.tensor([[0, 4.5, 0], [0, 0, 5.0]]))
    assert torch.equal(sae.encode(x[1:]), torch.tensor([[0, 0, 5.0]])), "one token at a time"
    batch = sae.encode_batch(x)
    assert torch.equal(batch, torch.tensor([[0, 4.5, 0], [0, 0, 5.0]]))
    assert float(sae.activation.threshold.value) == pytest.approx(theta), (
        "no update outside training"
    )


def test_threshold_ema_window_grows_with_the_run_and_is_infinite_until_observed():
    ema = WindowedEMA((2,), decay=0.999)
    assert torch.isinf(ema.value).all()
    ema.update(torch.tensor([2.0, 7.0]), torch.tensor([True, False]))
    assert ema.value[0] == pytest.approx(2.0) and math.isinf(ema.value[1])
    for value in [2.0] * 99 + [3.0] * 100:  # the codes' scale moves half-way through
        ema.update(torch.tensor([value, 1.0]), torch.tensor([True, True]))
    reference = 2.0
    for n, value in enumerate([2.0] * 99 + [3.0] * 100, start=2):
        decay = min(max(1 - 10 / n, 0.0), 0.999)
        reference = decay * reference + (1 - decay) * value
    assert float(ema.value[0]) == pytest.approx(reference, rel=1e-5)
    assert float(ema.value[0]) > 2.99, "after 200 batches θ follows the last ~20, not all 200"
    assert float(ema.value[1]) == pytest.approx(1.0), "latent 1: first seen at batch 2"
    long_run = WindowedEMA((), decay=0.999)
    long_run.observations.fill_(20_000)
    long_run.moment.fill_(1.0)
    long_run.update(torch.tensor(2.0), torch.tensor(True))
    assert float(long_run.value) == pytest.approx(1.001), "the decay is capped at 0.999"


# -- Feature Choice -----------------------------------------------------------------------------


def test_capacities_are_exact_capped_and_proportional():
    assert capacities(torch.ones(3), budget=10, cap=4).tolist() == [4, 3, 3]
    zipf = capacities(zipf_weights(6, a=1.0, b=0.0), budget=12, cap=4)
    assert int(zipf.sum()) == 12 and int(zipf.max()) == 4
    assert zipf.tolist() == sorted(zipf.tolist(), reverse=True), "by fixed feature index"
    uniform = capacities(torch.ones(15360), budget=32 * 4096, cap=4096)
    assert set(uniform.tolist()) == {8, 9} and int(uniform.sum()) == 32 * 4096
    with pytest.raises(ValueError):
        capacities(torch.ones(2), budget=9, cap=4)


def test_feature_choice_respects_each_latents_capacity_and_the_total_budget():
    sae = identity_sae("feature-choice:k=2,latents=3", 3)
    x = torch.tensor([[1.0, 9.0, 5.0], [2.0, 8.0, 4.0], [3.0, 7.0, 3.0], [4.0, 6.0, 2.0]])
    capacity = sae.activation.capacities(4, 3)
    assert capacity.tolist() == [3, 3, 2]  # k·B = 8 over 3 latents
    kept = sae.training_forward(x).code.to_dense() > 0
    assert kept.sum(dim=0).tolist() == [3, 3, 2] and int(kept.sum()) == 8
    assert kept[:, 0].tolist() == [False, True, True, True], "latent 0 takes its 3 best tokens"
    assert kept[:, 2].tolist() == [True, True, False, False]
    assert sae.activation.threshold.value.tolist() == [2.0, 7.0, 4.0]


def test_feature_choice_takes_only_positive_entries_and_zipf_capacities_vary():
    sae = identity_sae("feature-choice:k=1,latents=2,capacities=zipf,zipf_a=2", 2)
    x = torch.tensor([[1.0, -1.0], [2.0, -2.0], [-1.0, 3.0], [0.5, -0.5]])
    capacity = sae.activation.capacities(4, 2)
    assert capacity.tolist() == [3, 1]
    kept = sae.training_forward(x).code.to_dense() > 0
    assert kept.sum(dim=0).tolist() == [3, 1]
    x_negative = -x.abs()
    assert int((sae.training_forward(x_negative).code.to_dense() > 0).sum()) == 0


# -- g-SAE ----------------------------------------------------------------------------------------

AUGMENTED = "gsae:k=1,latents=3,beta=1,selection_only=false"  # values ReLU(s), with plain gains


def test_gsae_picks_a_small_but_consequential_latent_that_topk_misses():
    x = torch.tensor([[3.0, 0.5, 0.0]])
    g = torch.tensor([[0.0, 10.0, 0.0]])  # latent 1 moves the loss a lot
    topk = identity_sae("topk:k=1,latents=3", 3)
    gsae = identity_sae("gsae:k=1,latents=3,beta=1", 3)
    assert topk.encode(x).tolist() == [[3.0, 0, 0]]
    # key s = z (1 + β|W_decᵀ g|) = [3, 0.5 * 11, 0]: latent 1 wins, with its value z = 0.5
    assert gsae.encode(x, g).tolist() == [[0, 0.5, 0]], "selection-only values by default"
    assert gsae.training_forward(x, g).code.to_dense().tolist() == [[0, 0.5, 0]]
    augmented = identity_sae(AUGMENTED, 3)
    assert augmented.encode(x, g).tolist() == [[0, 5.5, 0]], "augmented value s = 5.5"
    assert augmented.training_forward(x, g).code.to_dense().tolist() == [[0, 5.5, 0]]
    for spec in ("gsae:k=1,latents=3,beta=1", AUGMENTED):
        assert identity_sae(spec, 3).encode(x).tolist() == [[3.0, 0, 0]], (
            "plain mode (no gradients) of an untrained g-SAE is TopK"
        )


def test_gsae_plain_mode_scales_each_latent_by_the_gain_training_gave_it():
    gsae = identity_sae(AUGMENTED, 3)
    # batch 1: latent 1 selected with z = 0.5, a = 10 -> f = 5.5; latent 0 with z = 2, a = 1 -> 4
    x1 = torch.tensor([[3.0, 0.5, 0.0], [2.0, 0.0, 0.0]])
    g1 = torch.tensor([[0.0, 10.0, 0.0], [1.0, 0.0, 0.0]])
    gsae.training_forward(x1, g1)
    gain = gsae.activation.plain_gain()
    # m_i = Σ z f / Σ z²: latent 1: 0.5·5.5 / 0.25 = 11; latent 0: 2·4 / 4 = 2; latent 2: never
    assert gain.tolist() == pytest.approx([2.0, 11.0, 1.0])
    # plain key m ∘ z = [2·1, 11·0.4, 0] -> latent 1, value 4.4 (not the raw 0.4)
    plain = gsae.encode(torch.tensor([[1.0, 0.4, 0.0]]))
    torch.testing.assert_close(plain, torch.tensor([[0, 4.4, 0]]))
    selection_only = identity_sae("gsae:k=1,latents=3,beta=1", 3)
    selection_only.training_forward(x1, g1)
    assert selection_only.activation.plain_gain().tolist() == [1.0, 1.0, 1.0]


def test_each_variant_names_its_modes_and_codes_in_each():
    """The variant, not a table elsewhere, says which modes a saved SAE is evaluated in; each
    mode codes as the variant's own entry points do (plain-uncorrected: TopK on z, the gains
    ignored)."""
    x = torch.tensor([[1.0, 0.4, 0.0], [0.2, 0.3, 0.9]])
    g = torch.tensor([[0.0, 10.0, 0.0], [1.0, 0.0, 0.0]])
    for spec, expected in (
        ("topk:k=1,latents=3", ("inference",)),
        ("relu:latents=3", ("inference",)),
        ("batchtopk:k=1,latents=3", ("threshold", "batch")),
        ("feature-choice:k=1,latents=3", ("threshold", "batch")),
        ("gsae:k=1,latents=3,beta=1", ("grad", "plain")),
    ):
        sae = identity_sae(spec, 3)
        assert sae.activation.modes(sae.activation.options) == expected, spec
    topk = identity_sae("topk:k=1,latents=3", 3)
    assert torch.equal(
        topk.activation.code_in("inference", topk, x, None).to_dense(), topk.encode(x)
    )
    batchtopk = identity_sae("batchtopk:k=1,latents=3", 3)
    codes = batchtopk.activation.code_in("batch", batchtopk, x, None).to_dense()
    assert torch.equal(codes, batchtopk.encode_batch(x))
    gsae = identity_sae(AUGMENTED, 3)
    assert gsae.activation.modes(gsae.activation.options, diagnostic=True)[-1] == (
        "plain-uncorrected"
    ), "augmented g-SAEs have a diagnostic mode without their gains"
    selection_only = identity_sae("gsae:k=1,latents=3,beta=1", 3).activation
    assert "plain-uncorrected" not in selection_only.modes(selection_only.options, True)
    gsae.training_forward(torch.tensor([[3.0, 0.5, 0.0]]), g[:1])  # learns a gain of 11 on 1
    grad = gsae.activation.code_in("grad", gsae, x, g).to_dense()
    assert torch.equal(grad, gsae.encode(x, g))
    plain = gsae.activation.code_in("plain", gsae, x, None).to_dense()
    torch.testing.assert_close(plain, torch.tensor([[0, 4.4, 0], [0, 3.3, 0]]))
    uncorrected = gsae.activation.code_in("plain-uncorrected", gsae, x, None).to_dense()
    assert torch.equal(uncorrected, torch.tensor([[1.0, 0, 0], [0, 0, 0.9]])), "TopK on z"
    with pytest.raises(ValueError, match="no inference mode"):
        topk.activation.code_in("grad", topk, x, g)


def test_a_gsae_saved_before_the_plain_mode_gain_loads_and_encodes_as_it_did(tmp_path):
    """SAEs saved by saekit before the gain lack its state: they load with no gain, so plain
    mode is TopK on z as that saekit computed it; any other missing tensor is still refused."""
    gsae = identity_sae(AUGMENTED, 3)
    gsae.training_forward(torch.tensor([[3.0, 0.5, 0.0]]), torch.tensor([[0.0, 10.0, 0.0]]))
    save(tmp_path, "g", gsae, tmp_path / "store.zarr", hook="h")
    weights = tmp_path / "saes" / "g" / "sae.safetensors"
    later = tuple(f"activation.{m}." for m in ("median_sensitivity", "code_moment", "plain_moment"))
    old_tensors = {k: v for k, v in load_file(weights).items() if not k.startswith(later)}
    save_file(old_tensors, weights)
    loaded = load_sae(tmp_path / "saes" / "g")
    assert loaded.activation.plain_gain().tolist() == [1.0, 1.0, 1.0]
    x = torch.tensor([[1.0, 0.4, 0.0]])
    torch.testing.assert_close(loaded.encode(x), torch.tensor([[1.0, 0, 0]]), msg="TopK on z")
    del old_tensors["W_enc"]
    save_file(old_tensors, weights)
    with pytest.raises(SaekitError, match="holds W_enc of shape none"):
        load_sae(tmp_path / "saes" / "g")


def test_gsae_saelens_tensors_compute_plain_mode_with_saelens_topk():
    """SAELens' TopK (pre = (x − b_dec) W_enc + b_enc; ReLU of the k largest; f W_dec + b_dec)
    on the exported tensors reconstructs what plain mode does: the gains are folded in."""
    gsae = identity_sae(AUGMENTED, 3)
    gsae.training_forward(
        torch.tensor([[3.0, 0.5, 0.0], [2.0, 0.0, 0.0]]),
        torch.tensor([[0.0, 10.0, 0.0], [1.0, 0.0, 0.0]]),
    )  # gains [2, 11, 1], as above
    tensors = gsae.activation.saelens_tensors(gsae)
    x = torch.tensor([[1.0, 0.4, 0.0], [0.0, 0.1, 0.5], [3.0, 0.0, 0.2]])
    pre = (x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]
    top = pre.topk(1, dim=1)
    f = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
    torch.testing.assert_close(f @ tensors["W_dec"] + tensors["b_dec"], gsae(x))
    assert f[0].tolist() == pytest.approx([0, 4.4, 0]), "the gain, not the raw 0.4"


def test_gsae_beta_eff_sets_beta_from_the_median_sensitivity_of_topk_latents():
    sae = identity_sae("gsae:k=1,latents=3,beta_eff=0.5", 3)
    x = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 4.0]])
    g = torch.tensor([[2.0, 9.0, 9.0], [9.0, 4.0, 9.0], [9.0, 9.0, 8.0]])
    # top-1 latents of z: 0, 1, 2 with a = |g| there: 2, 4, 8 -> median 4
    assert sae.activation.calibrate_(sae, x, g) == {"beta": 0.5 / 4}


@pytest.mark.parametrize("tracking", [False, True])
def test_gsae_beta_tracking_keeps_beta_times_median_sensitivity_at_beta_eff(tracking):
    sae = identity_sae(f"gsae:k=1,latents=3,beta_eff=0.5,beta_tracking={tracking}", 3)
    x = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 4.0]])
    g = torch.tensor([[2.0, 9.0, 9.0], [9.0, 4.0, 9.0], [9.0, 9.0, 8.0]])
    sae.activation.calibrate_(sae, x, g)  # median a = 4: β = 0.125
    sae.training_forward(x, 3 * g)  # the gradients' scale grows 3x: median a = 12
    measured = float(sae.activation.step_metrics()["beta_eff_measured"])
    if tracking:
        assert float(sae.activation.beta) == pytest.approx(0.5 / 12)
        assert measured == pytest.approx(0.5), "β re-set before this batch's selection"
    else:
        assert float(sae.activation.beta) == pytest.approx(0.125)
        assert measured == pytest.approx(1.5), "β·median(a) drifts to 3x beta_eff"


# -- Gated ----------------------------------------------------------------------------------------


def gated_with_random_parameters():
    sae = build("gated:latents=6", 4, seed=1)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return sae


def test_gated_magnitude_path_is_tied_to_the_gate():
    sae = gated_with_random_parameters()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    x_cent = x - sae.b_dec
    pi_gate = x_cent @ sae.W_enc.T + sae.b_enc
    W_mag = sae.activation.r_mag.exp()[:, None] * sae.W_enc
    pi_mag = x_cent @ W_mag.T + sae.activation.b_mag
    expected = (pi_gate > 0) * pi_mag.relu()
    torch.testing.assert_close(sae.encode(x), expected)
    torch.testing.assert_close(sae.training_forward(x).code.to_dense(), expected)


@pytest.mark.parametrize(
    ("term", "with_gradient", "without_gradient"),
    [
        ("mse", {"W_enc", "W_dec", "b_dec", "r_mag", "b_mag"}, {"b_enc"}),
        ("gate_aux", {"W_enc", "b_enc"}, {"W_dec", "r_mag", "b_mag"}),
        ("l1", {"W_enc", "b_enc"}, {"W_dec", "r_mag", "b_mag"}),
    ],
)
def test_gated_terms_train_the_parameters_they_should(term, with_gradient, without_gradient):
    """The Heaviside gate passes no gradient (b_gate learns only from the last two terms); the
    auxiliary reconstruction uses a frozen decoder."""
    sae = gated_with_random_parameters()
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(3))
    loss_term(sae, term)(sae, sae.training_forward(x), context(sae)).backward()
    names = {"W_enc", "b_enc", "W_dec", "b_dec", "r_mag", "b_mag"}
    grads = {
        n.split(".")[-1]: p.grad for n, p in sae.named_parameters() if n.split(".")[-1] in names
    }
    for name in with_gradient:
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    for name in without_gradient:
        assert grads[name] is None or torch.all(grads[name] == 0), name


# -- JumpReLU -------------------------------------------------------------------------------------


def test_jumprelu_straight_through_gradients_follow_the_formulas():
    eps = 0.1
    z = torch.tensor([[0.98, 1.04, 2.0, 0.5], [1.02, 0.96, 0.97, 1.6]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0, 2.02, 1.5], requires_grad=True)
    upstream = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    f = jump_relu(z, theta, eps)
    assert torch.equal(f.detach(), z.detach() * (z.detach() > theta.detach()))
    (f * upstream).sum().backward()
    inside = ((z - theta).abs() < eps / 2).float().detach()  # rectangle kernel K((z − θ)/ε)
    torch.testing.assert_close(z.grad, (z > theta).float().detach() * upstream)
    torch.testing.assert_close(theta.grad, (-(theta.detach() / eps) * inside * upstream).sum(0))
    assert theta.grad.tolist()[3] == 0, "no z within ε/2 of θ: no gradient"

    z.grad = theta.grad = None
    (step(z, theta, eps) * upstream).sum().backward()
    assert torch.all(z.grad == 0), "the step passes no gradient to z"
    torch.testing.assert_close(theta.grad, (-(1 / eps) * inside * upstream).sum(0))


def test_jumprelu_learns_log_threshold_through_the_l0_penalty():
    sae = identity_sae("jumprelu:latents=2,threshold=1.0,bandwidth=0.1", 2)
    x = torch.tensor([[1.03, 0.2], [0.99, 3.0]])
    fwd = sae.training_forward(x)
    assert fwd.extras["l0_B"].tolist() == [1.0, 1.0]
    loss_term(sae, "l0")(sae, fwd, context(sae)).backward()
    # ∂ mean(L0)/∂ log θ_0 = θ · (−1/ε) · (2 tokens in the kernel) / B = −10
    assert sae.activation.log_threshold.grad.tolist() == pytest.approx([-10.0, 0.0])


# -- ReLU -----------------------------------------------------------------------------------------


def test_relu_penalty_weighs_each_activation_by_its_decoder_norm():
    sae = identity_sae("relu:latents=2,l1=2", 2)
    with torch.no_grad():
        sae.W_dec.mul_(torch.tensor([3.0, 0.5]))
    fwd = sae.training_forward(torch.tensor([[1.0, 4.0], [-1.0, 2.0]]))
    penalty = loss_term(sae, "l1")
    assert isinstance(penalty, L1Penalty) and penalty.coefficient == 2
    # (1·3 + 4·0.5 + 0 + 2·0.5) / 2
    assert float(penalty(sae, fwd, context(sae)).detach()) == pytest.approx(3.0)
    assert penalty.weight(0.0) == 0 and penalty.weight(0.025) == pytest.approx(1.0)


# -- AuxK and aux_zipf ----------------------------------------------------------------------------


def test_auxk_only_touches_dead_latents():
    sae = build("topk:k=2,latents=8,k_aux=2", 4, seed=4)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(5))
    dead = [5, 6, 7]
    aux = loss_term(sae, "auxk")
    value = aux(sae, sae.training_forward(x), context(sae, dead))
    assert value > 0
    value.backward()
    alive = [0, 1, 2, 3, 4]
    assert torch.all(sae.W_enc.grad[alive] == 0) and torch.all(sae.b_enc.grad[alive] == 0)
    assert torch.all(sae.W_dec.grad[:, alive] == 0)
    assert sae.W_enc.grad[dead].abs().sum() > 0 and sae.W_dec.grad[:, dead].abs().sum() > 0
    no_dead = aux(sae, sae.training_forward(x), context(sae, []))
    assert float(no_dead) == 0.0


def test_auxk_reconstructs_the_detached_residual_normalised():
    sae = identity_sae("topk:k=1,latents=3,k_aux=1", 3)
    x = torch.tensor([[2.0, 1.0, 0.3], [3.0, 0.2, 0.5]])
    fwd = sae.training_forward(x)
    # TopK keeps latent 0: residual e = x with column 0 zeroed; dead = {1, 2}, k_aux = 1:
    # ê keeps the largest dead pre-activation of each row (1.0 of latent 1, 0.5 of latent 2)
    value = loss_term(sae, "auxk")(sae, fwd, context(sae, [1, 2])).detach()
    e = torch.tensor([[0.0, 1.0, 0.3], [0.0, 0.2, 0.5]])
    e_hat = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.5]])
    expected = (e - e_hat).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
    assert float(value) == pytest.approx(float(expected)) and float(value) > 0.3


def test_zipf_fit_recovers_the_law_of_the_latents_that_fired():
    densities = 0.3 * zipf_weights(1000, a=1.1, b=10.0).float()
    densities[700:] = 0.0  # 30 % of the latents never fired: they say nothing about the law
    shuffled = densities[torch.randperm(1000, generator=torch.Generator().manual_seed(0))]
    for observed in (densities, shuffled):
        a_1, b_1 = fit_zipf(observed)
        assert float(a_1) == pytest.approx(1.1, rel=1e-3) and float(b_1) == 10.0
    a_1, _ = fit_zipf(torch.zeros(64))
    assert abs(float(a_1)) < 1e-12, "before anything fired, the law is flat"


def test_zipf_underused_latents_are_those_far_below_the_fitted_law():
    densities = 0.5 * zipf_weights(40, a=1.2, b=2.0).float()
    starved = [3, 10, 17, 22, 28, 31, 35, 39]  # they fall off the law, into the tail ranks
    densities[starved] = 1e-6
    fitted = zipf_expectation(densities)
    assert float(fitted.sum()) == pytest.approx(float(densities.sum()), rel=1e-4)
    usage = LatentUsage(40, dead_tokens=100, device=torch.device("cpu"))
    usage.density_F.copy_(densities)
    usage.tokens_since_fired_F[20] = 100  # dead
    underused = set(usage.underused_F().nonzero().flatten().tolist())
    assert underused == {*starved, 20}


def test_aux_zipf_equals_auxk_when_the_underused_set_is_the_dead_set():
    sae = build("batchtopk:k=2,latents=8,aux=zipf,k_aux=3", 4, seed=6)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(7))
    ctx = context(sae, [1, 4])  # densities all 0: nothing is under-used beyond the dead
    fwd = sae.training_forward(x)
    zipf = AuxZipf(k_aux=3)(sae, fwd, ctx).detach()
    auxk = AuxK(k_aux=3)(sae, fwd, ctx).detach()
    assert float(zipf) == pytest.approx(float(auxk)) and float(auxk) > 0


# -- decoder norm, input scale --------------------------------------------------------------------


def test_parallel_gradient_is_removed_and_columns_renormalised():
    sae = build("topk:k=2,latents=6", 4, seed=8)
    sae.W_dec.grad = torch.randn(4, 6, generator=torch.Generator().manual_seed(9))
    sae.remove_parallel_decoder_grad_()
    assert (sae.W_dec.grad * sae.W_dec).sum(dim=0).abs().max() < 1e-6
    plan = Plan.make(64 * 3, 64, 1000, 0.0, 0.0)
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(10))
    spec = parse_spec("topk:k=2,latents=6").resolve(4)
    member = Member(spec, sae, plan, grad_clip=1.0)
    relu = build("relu:latents=6", 4, seed=8)
    relu_member = Member(parse_spec("relu:latents=6").resolve(4), relu, plan, grad_clip=1.0)
    unit_text = "relu:latents=6,decoder=unit"
    unit = build(unit_text, 4, seed=8)
    unit_member = Member(parse_spec(unit_text).resolve(4), unit, plan, grad_clip=1.0)
    for i in range(3):
        member.step(x, None, i)
        relu_member.step(x, None, i)
        unit_member.step(x, None, i)
    torch.testing.assert_close(sae.decoder_norms(), torch.ones(6))
    assert relu.decoder_norms().max() < 0.5, "ReLU's decoder is unconstrained (init norm 0.1)"
    torch.testing.assert_close(unit.decoder_norms(), torch.ones(6), msg="decoder=unit")


SPECS = [
    "relu:latents=12",
    "topk:k=3,latents=12",
    "batchtopk:k=3,latents=12",
    "feature-choice:k=3,latents=12",
    "gsae:k=3,latents=12,beta=2",
    "gated:latents=12",
    "jumprelu:latents=12,threshold=0.2",
]


@pytest.mark.parametrize("text", SPECS)
def test_folded_sae_on_raw_inputs_equals_the_trained_sae_on_scaled_inputs(text):
    c = 0.37
    trained = build(text, 5, seed=11)
    with torch.no_grad():
        trained.b_dec.copy_(torch.randn(5, generator=torch.Generator().manual_seed(12)))
    rng = torch.Generator().manual_seed(13)
    trained.training_forward(torch.randn(64, 5, generator=rng), torch.randn(64, 5, generator=rng))
    x_raw = torch.randn(8, 5, generator=rng) * 4
    g_raw = torch.randn(8, 5, generator=rng)
    folded = copy.deepcopy(trained)
    folded.fold_scales_([c], [c])
    g_scaled = g_raw / c  # ∂L/∂(c x) = g / c
    needs_g = VARIANTS[folded.activation.name].needs_gradients
    raw = folded.encode(x_raw, g_raw if needs_g else None)
    scaled = trained.encode(c * x_raw, g_scaled if needs_g else None)
    torch.testing.assert_close(raw, scaled)
    torch.testing.assert_close(folded.decode(raw) * c, trained.decode(scaled))
    torch.testing.assert_close(folded(x_raw) * c, trained(c * x_raw))
    if needs_g:  # the g-SAE key: |W_dec_rawᵀ g_raw| equals the training-space |W_decᵀ g / c|
        a_raw = (g_raw @ folded.W_dec).abs()
        torch.testing.assert_close(a_raw, (g_scaled @ trained.W_dec).abs())


@pytest.mark.parametrize("gpu_path", [False, True])
@pytest.mark.parametrize("skewed", [False, True])
def test_batch_top_values_match_a_search_of_the_whole_matrix(monkeypatch, skewed, gpu_path):
    monkeypatch.setattr(devices, "host_reads_are_free", lambda device: not gpu_path)
    z = torch.randn(64, 200, generator=torch.Generator().manual_seed(14))
    if skewed:  # one token holds most of the batch's largest values: the bound is loose
        z[7] += 10
    values, flat = top_of_batch(z, 64 * 3)
    expected = z.flatten().topk(64 * 3)
    assert sorted(flat.tolist()) == sorted(expected.indices.tolist())
    assert torch.equal(values.sort().values, expected.values.sort().values)
    assert torch.equal(z.flatten()[flat], values)

"""`sae eval`: exact cases (identity, zero), hand-computed offline metrics, batching invariance,
report files, and bad inputs that touch nothing."""

import json

import matplotlib.image
import numpy as np
import pytest
import torch

from helpers import assert_one_line_error, harvest_small_store, relu_sae, save, snapshot
from saekit.cache_format import ActivationStore, HookSpec
from saekit.cache_format.nonfinite import NonFinitePolicy
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store
from saekit.evaluate import EvalRequest, evaluate
from saekit.evaluate.heldout import heldout_contexts, heldout_row_slots, holdout_batches
from saekit.evaluate.online import batch_mode_reconstructions
from saekit.evaluate.targets import Target
from saekit.lm import load_model, run_batch
from saekit.train import Shape
from saekit.train.sae_config import SAEConfig
from saekit.train.spec import parse_spec
from saekit.train.variants import modes

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def lm_store(tiny_lm, corpus, tmp_path_factory):
    """A float32 store of the tiny LM at one hook, 960 held-out tokens in 30 contexts."""
    out = tmp_path_factory.mktemp("eval") / "store.zarr"
    return harvest_small_store(tiny_lm, corpus, out, dtype="float32")


def identity(d):
    """f = ReLU([x; −x]), x̂ = f⁺ − f⁻ = x exactly."""
    eye = torch.eye(d)
    return relu_sae(d, 2 * d, torch.cat([eye, -eye]), torch.cat([eye, -eye], dim=1))


def zero(d):
    return relu_sae(d, d, torch.eye(d), torch.zeros(d, d))


def rows_by_label(out):
    report = json.loads((out / "report.json").read_text())
    return report, {row["label"]: row for row in report["rows"]}


def test_identity_and_zero_saes_bracket_the_lm(lm_store, tmp_path):
    d = ActivationStore.open(lm_store).spec.hooks[HOOK].d
    run = tmp_path / "run"
    save(run, "identity", identity(d), lm_store)
    save(run, "zero", zero(d), lm_store)
    evaluate(EvalRequest(runs=(str(run),), out=str(tmp_path / "report"), device="cpu"))
    report, rows = rows_by_label(tmp_path / "report")
    same = rows["identity"]["online"]
    assert abs(same["loss_added"]) < 1e-5 and same["kl"] < 1e-6
    assert same["ce_recovered_zero"] == pytest.approx(1.0, abs=1e-5)
    assert same["ce_recovered_mean"] == pytest.approx(1.0, abs=1e-4)
    assert rows["identity"]["offline"]["nmse"] < 1e-10
    nothing = rows["zero"]["online"]
    assert nothing["ce_spliced"] == pytest.approx(nothing["ce_zero"], rel=1e-6)
    assert nothing["ce_recovered_zero"] == pytest.approx(0.0, abs=1e-6)
    assert nothing["loss_added"] == pytest.approx(nothing["ce_zero"] - nothing["ce_clean"])
    assert report["tokens"]["online"] == 30 * 30, "positions 1 to T−2 of the 30 contexts"
    store = ActivationStore.open(lm_store)
    rows_read = store.read(["loss", "position"], *store.ranges("holdout")[0])
    changeable = (rows_read["position"] > 0) & (rows_read["position"] < 31)
    assert same["ce_clean"] == pytest.approx(
        float(rows_read["loss"][changeable].mean()), rel=1e-5
    ), "the clean CE averages the harvest's per-token loss without position 0"
    assert rows["zero"]["offline"]["nmse"] > 0.5


def test_offline_metrics_match_a_hand_computation(tmp_path):
    """d = 4 synthetic rows, an SAE with hand-picked weights; every metric recomputed in numpy."""
    spec = synthetic_spec(2048, hooks={"h": HookSpec(d=4)}, holdout_rows=512)
    write_synthetic_store(tmp_path / "s.zarr", spec)
    W_enc = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 0], [0, 0, 0, 0.0]])
    W_dec = torch.tensor([[0.5, 0, 0, 0], [0, 2, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1.0]])
    b_dec = torch.tensor([0.1, -0.2, 0.0, 0.3])
    sae = relu_sae(4, 4, W_enc, W_dec, b_enc=torch.tensor([0.0, 0, 0, -1.0]), b_dec=b_dec)
    save(tmp_path / "run", "hand", sae, tmp_path / "s.zarr", hook="h")
    evaluate(EvalRequest(runs=(str(tmp_path / "run"),), out=str(tmp_path / "r"), online=False))
    got = rows_by_label(tmp_path / "r")[1]["hand"]["offline"]

    store = ActivationStore.open(tmp_path / "s.zarr")
    rows = store.read_tensors(["activations", "position"], 0, 512, "h")
    x = rows["activations"][rows["position"] != 0].double().numpy()
    train = store.read_tensors(["activations", "position"], 512, 2048, "h")
    mu = train["activations"][train["position"] != 0].double().numpy().mean(0)
    f = np.maximum((x - b_dec.numpy()) @ W_enc.numpy().T + np.array([0, 0, 0, -1.0]), 0)
    x_hat = f @ W_dec.numpy().T + b_dec.numpy()
    l0 = (f != 0).sum(1)
    expected = {
        "tokens": len(x),
        "nmse": ((x - x_hat) ** 2).sum() / ((x - mu) ** 2).sum(),
        "l0": l0.mean(),
        "l0_zero_fraction": (l0 == 0).mean(),
        "dead_fraction": ((f != 0).sum(0) == 0).mean(),
        "dense_fraction": ((f != 0).mean(0) > 0.1).mean(),
        "underused_fraction": ((f != 0).mean(0) < 0.1 * l0.mean() / 4).mean(),
        "relative_reconstruction_bias": (x_hat**2).sum() / (x * x_hat).sum(),
        "cosine": ((x * x_hat).sum(1) / np.linalg.norm(x, axis=1)
                   / np.linalg.norm(x_hat, axis=1)).mean(),
    }  # fmt: skip
    assert got["l0_histogram"] == np.bincount(l0).tolist()
    assert got["dead_fraction"] == 0.25, "latent 3 never fires (its bias is −1 on a zero row)"
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-5), name
    assert got["variance_explained"] == pytest.approx(1 - expected["nmse"], abs=1e-6)


@pytest.mark.slow  # trains an SAE, then evaluates it at two LM batch sizes
def test_thresholded_eval_does_not_depend_on_batching(lm_store, tmp_path):
    """A trained BatchTopK SAE: threshold-mode numbers are the same for any LM batch size."""
    from saekit.cli import main

    run = tmp_path / "run"
    with pytest.raises(SystemExit) as done:
        main(
            [
                "train",
                "--store",
                str(lm_store),
                "--out",
                str(run),
                "--sae",
                "batchtopk:k=4,latents=128",
                "--tokens",
                "8192",
                "--batch-size",
                "256",
            ]
        )
    assert done.value.code in (0, None)
    reports = []
    for batch_size in (3, 7):
        out = tmp_path / f"r{batch_size}"
        evaluate(EvalRequest(runs=(str(run),), out=str(out), batch_size=batch_size))
        reports.append(rows_by_label(out)[1])
    a, b = reports
    (threshold,) = [label for label in a if label.endswith("[threshold]")]
    (batch,) = [label for label in a if label.endswith("[batch]")]
    for key in ("ce_spliced", "loss_added", "kl"):
        assert a[threshold]["online"][key] == pytest.approx(b[threshold]["online"][key], rel=1e-6)
        assert a[batch]["online"][key] == pytest.approx(b[batch]["online"][key], rel=1e-6), (
            "batch mode selects over the offline batches of held-out rows, not one LM batch"
        )
    assert a[threshold]["offline"] == b[threshold]["offline"]
    assert any(label.endswith("[batch]") for label in a), "batch mode is a separate row"


def test_online_batch_mode_splices_what_offline_batch_mode_reconstructs(lm_store, tiny_lm):
    """Same rows, same batches of the training size: the spliced rows are offline's x̂."""
    store = ActivationStore.open(lm_store)
    sae = parse_spec("feature-choice:k=4,latents=128").resolve(64).build(Shape.single(HOOK, 64))
    sae.init_weights_(torch.Generator().manual_seed(0), 1.0, None)
    sae.cfg = SAEConfig(
        name="fc", variant="feature-choice", hook=HOOK, d_in=64, d_sae=128, k=4, options={},
        calibration={}, input_scale=1.0, store={}, training={"batch_size": 64},
    )  # fmt: skip
    offline = list(holdout_batches(store, HOOK, ("activations",), None, 64, NonFinitePolicy()))
    x_offline = torch.cat([batch["activations"] for batch in offline])
    x_hat_offline = torch.cat([sae.decode(sae.encode_batch(b["activations"])) for b in offline])
    model = load_model(str(tiny_lm), torch.device("cpu"))
    contexts, slots = heldout_contexts(store, None), heldout_row_slots(store, None)
    target = Target("run", sae, modes.BATCH)
    by_label = batch_mode_reconstructions(model, contexts, [target], slots, 8, torch.device("cpu"))
    spliced = {target.label: by_label[target.label][HOOK]}
    clean = run_batch(model.bridge, contexts, [HOOK], gradients=False).activations[HOOK]
    torch.testing.assert_close(clean[slots], x_offline, rtol=1e-4, atol=1e-4, msg="same rows")
    torch.testing.assert_close(spliced[target.label][slots], x_hat_offline, rtol=1e-4, atol=1e-4)
    assert torch.equal(spliced[target.label][:, 0], clean[:, 0]), "position 0 is never replaced"
    first_lm_batch = clean[:8, 1:].reshape(-1, 64)  # what selecting over one LM batch would see
    lm_batch_x_hat = sae.decode(sae.encode_batch(first_lm_batch))
    assert not torch.allclose(lm_batch_x_hat, spliced[target.label][:8, 1:].reshape(-1, 64))


def test_report_files_and_plots(lm_store, tmp_path, run_cli):
    d = ActivationStore.open(lm_store).spec.hooks[HOOK].d
    run = tmp_path / "run"
    save(run, "identity", identity(d), lm_store)
    save(run, "zero", zero(d), lm_store)
    result = run_cli("eval", run, "--out", tmp_path / "report", "--steering", "--tokens", "320")
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "report"
    for png in ("l0_vs_nmse.png", "l0_vs_loss_added.png", "dead_latents.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(out / png)
        assert image.shape[0] >= 250 and image.shape[1] >= 600, "a readable size"
    markdown = (out / "report.md").read_text()
    assert "| identity | relu |" in markdown and "loss added" in markdown
    report, rows = rows_by_label(out)
    assert report["tokens"]["online"] == 10 * 30, "--tokens bounds the work (10 contexts)"
    steering = rows["identity"]["steering"]
    assert steering["latents"] > 0 and 0 <= steering["precision_median"] <= 1
    assert report["store"]["identity"]["model"], "provenance of the store is in the report"


def test_bad_inputs_touch_nothing(lm_store, tmp_path, run_cli, tiny_lm):
    d = ActivationStore.open(lm_store).spec.hooks[HOOK].d
    other_hook, narrow, good, empty = (tmp_path / n for n in ("hook", "narrow", "good", "empty"))
    save(other_hook, "x", identity(d), lm_store, hook="blocks.0.hook_resid_post")
    save(narrow, "x", identity(d // 2), lm_store)
    save(good, "x", identity(d), lm_store)
    empty.mkdir()
    no_holdout = tmp_path / "no-holdout.zarr"
    write_synthetic_store(no_holdout, synthetic_spec(1024, hooks={HOOK: HookSpec(d=d)}))
    before = snapshot(tmp_path), snapshot(lm_store)
    out = tmp_path / "out"
    assert_one_line_error(
        run_cli("eval", other_hook, "--out", out), "trained on hook blocks.0.hook_resid_post"
    )
    assert_one_line_error(run_cli("eval", narrow, "--out", out), f"d_in={d // 2}", f"d={d}")
    assert_one_line_error(run_cli("eval", empty, "--out", out), "is neither a run nor a saved SAE")
    assert_one_line_error(
        run_cli("eval", good, "--out", out, "--store", no_holdout), "has no held-out rows"
    )
    assert_one_line_error(run_cli("eval", good, "--out", good / "inside"), "inside run")
    assert_one_line_error(
        run_cli("eval", tmp_path / "missing-run", "--out", out), "is not a directory"
    )
    assert not out.exists()
    assert (snapshot(tmp_path), snapshot(lm_store)) == before, "eval never writes runs or stores"


def test_a_model_of_another_width_is_refused(lm_store, tmp_path, run_cli):
    from saekit.demo import build_tiny_lm, generate_documents

    narrow = build_tiny_lm(
        tmp_path / "narrow-lm", generate_documents(200), vocab_size=300, n_embd=32
    )
    run = tmp_path / "run"
    save(run, "x", identity(ActivationStore.open(lm_store).spec.hooks[HOOK].d), lm_store)
    assert_one_line_error(
        run_cli("eval", run, "--out", tmp_path / "out", "--model", narrow),
        "gives d=32",
        "the store has d=64",
    )

"""`sae train` end to end: outputs, exports, several SAEs per pass, and every bad input."""

import json

import numpy as np
import pytest
import torch
import zarr
from safetensors.torch import load_file

import saekit.train.trainer as trainer_module
from helpers import snapshot
from saekit.cache_format import ActivationStore, HookSpec
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store
from saekit.train import TrainRequest, TrainSettings, load_sae, parse_spec, train
from saekit.train.checkpoint import Checkpoints
from saekit.train.metrics import TIMING_KEYS, read_metrics
from saekit.train.spec import ResolvedSpec
from saekit.train.variants import VARIANTS
from train_helpers import ALL_VARIANTS

NAN_ACTIVATION_ROWS = [1100, 2047]
INF_GRADIENT_ROWS = [3001]


def train_args(store, out, *specs, tokens=2048, batch=256):
    args = ["train", "--store", store, "--out", out, "--tokens", tokens, "--batch-size", batch]
    for spec in specs:
        args += ["--sae", spec]
    return args


@pytest.fixture(scope="module")
def all_variants_run(tmp_path_factory):
    """Every variant trained in one pass over a small synthetic store (2.4 epochs)."""
    root = tmp_path_factory.mktemp("all")
    write_synthetic_store(root / "store.zarr", synthetic_spec(4096, holdout_rows=512))
    request = TrainRequest(
        store=str(root / "store.zarr"),
        hook=None,
        out=root / "run",
        specs=[parse_spec(text) for text in ALL_VARIANTS],
        settings=TrainSettings(tokens=8000, batch_size=256, log_every=10),
    )
    return request, train(request)


def trained_space_sae(run_dir, name):
    """The SAE of `name` as trained (scaled-input space), from the final checkpoint."""
    config = json.loads((run_dir / "config.json").read_text())
    (entry,) = [s for s in config["run"]["saes"] if s["name"] == name]
    options = VARIANTS[entry["variant"]].options_type(**entry["options"])
    sae = ResolvedSpec(name, entry["variant"], options).build(64)
    checkpoint = Checkpoints(run_dir).load([name])
    sae.load_state_dict(checkpoint.members[name]["sae"])
    return sae.eval(), config["calibration"]["input_scale"]


def holdout_rows(store_path, n=300):
    store = ActivationStore.open(store_path)
    rows = store.read_tensors(["activations", "gradients", "position"], 0, n)
    keep = rows["position"] != 0
    return rows["activations"][keep], rows["gradients"][keep]


def test_a_run_writes_config_metrics_checkpoint_and_saes(all_variants_run):
    request, result = all_variants_run
    run = result.run_dir
    config = json.loads((run / "config.json").read_text())
    plan = config["plan"]
    assert plan["steps"] == 8000 // 256 and plan["tokens"] == 31 * 256
    assert plan["train_rows"] == 3584 - 3584 // 16, "training rows, position 0 excluded"
    assert plan["epochs"] == pytest.approx(7936 / 3360)
    names = [s["name"] for s in config["run"]["saes"]]
    assert names == list(result.sae_dirs) and len(names) == 7
    options = config["run"]["saes"][1]["options"]
    assert options["lr"] == pytest.approx(2e-4 * (16384 / 96) ** 0.5) and options["k_aux"] == 512
    assert config["calibration"]["saes"][names[4]]["beta"] > 0, "g-SAE's beta from beta_eff"

    records = read_metrics(run / "metrics.jsonl")
    assert len(records) == 7 * 4  # steps 10, 20, 30 and the last, 31
    assert [r["step"] for r in records[::7]] == [10, 20, 30, 31]
    assert {r["epoch"] for r in records} == {0, 1, 2}, "2.4 epochs"
    for key in ("loss", "nmse", "l0", "l0_p50", "l0_zero", "dead_fraction", "lr", *TIMING_KEYS):
        assert all(key in r for r in records), key
    assert all(0 <= r["data_wait_fraction"] <= 1 for r in records)
    topk = [r for r in records if r["sae"] == "topk-k4-96"]
    assert all(r["l0"] == 4 for r in topk) and "loss/auxk" in topk[0]
    assert topk[-1]["nmse"] < topk[0]["nmse"], "training reduces the reconstruction error"
    assert Checkpoints(run).latest() == {
        "step": 31,
        "directory": "step-000000031",
        "complete": True,
    }
    for name, directory in result.sae_dirs.items():
        assert (directory / "sae.safetensors").is_file() and (directory / "cfg.json").is_file()
        cfg = json.loads((directory / "cfg.json").read_text())
        assert cfg["name"] == name and cfg["store"]["location"] == request.store
        assert cfg["store"]["identity"]["generator"] == "saekit.synthetic"
        assert cfg["training"]["tokens"] == 7936


def test_the_input_scale_makes_the_mean_norm_sqrt_d(all_variants_run):
    request, result = all_variants_run
    scale = json.loads((result.run_dir / "config.json").read_text())["calibration"]["input_scale"]
    store = ActivationStore.open(request.store)
    rows = store.read_tensors(["activations", "position"], 512, 4096)
    x = rows["activations"][rows["position"] != 0]
    assert float((scale * x).norm(dim=1).mean()) == pytest.approx(8.0, rel=0.02)


@pytest.mark.parametrize("text", ALL_VARIANTS)
def test_the_saved_sae_on_raw_inputs_equals_the_trained_sae_on_scaled_inputs(
    all_variants_run, text
):
    request, result = all_variants_run
    (name,) = [n for n in result.sae_dirs if n.startswith(text.split(":")[0] + "-")]
    saved = load_sae(result.sae_dirs[name])
    trained, c = trained_space_sae(result.run_dir, name)
    assert saved.cfg.name == name and saved.cfg.input_scale == c and saved.cfg.d_in == 64
    x, g = holdout_rows(request.store)
    with torch.no_grad():
        modes = [(None, None), (g, g / c)] if saved.activation.needs_gradients else [(None, None)]
        for raw_g, scaled_g in modes:
            f = saved.encode(x, raw_g)
            torch.testing.assert_close(f, trained.encode(c * x, scaled_g), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(
                saved(x, raw_g) * c, trained(c * x, scaled_g), rtol=1e-4, atol=1e-4
            )
            assert (f > 0).any()
        batch = saved.encode_batch(x)
        torch.testing.assert_close(batch, trained.encode_batch(c * x), rtol=1e-4, atol=1e-4)


def saelens_forward(tensors, cfg, x):
    """SAELens' documented inference for the architectures saekit exports to."""
    sae_in = x - tensors["b_dec"]
    arch = cfg["architecture"]
    if arch == "gated":
        gate = sae_in @ tensors["W_enc"] + tensors["b_gate"]
        mag = sae_in @ (tensors["W_enc"] * tensors["r_mag"].exp()) + tensors["b_mag"]
        f = (gate > 0) * mag.relu()
    else:
        hidden = sae_in @ tensors["W_enc"] + tensors["b_enc"]
        if arch == "topk":
            top = hidden.topk(cfg["k"], dim=-1)
            f = torch.zeros_like(hidden).scatter(-1, top.indices, top.values.relu())
        elif arch == "jumprelu":
            f = hidden.relu() * (hidden > tensors["threshold"])
        else:
            f = hidden.relu()
    return f @ tensors["W_dec"] + tensors["b_dec"]


EXPORTED_AS = {
    "relu": "standard",
    "topk": "topk",
    "batchtopk": "jumprelu",
    "feature-choice": "jumprelu",
    "gsae": "topk",
    "gated": "gated",
    "jumprelu": "jumprelu",
}


@pytest.mark.parametrize("text", ALL_VARIANTS)
def test_the_saelens_export_has_its_layout_and_computes_the_same(all_variants_run, text):
    request, result = all_variants_run
    variant = text.split(":")[0]
    (name,) = [n for n in result.sae_dirs if n.startswith(variant + "-")]
    directory = result.sae_dirs[name] / "saelens"
    cfg = json.loads((directory / "cfg.json").read_text())
    tensors = load_file(directory / "sae_weights.safetensors")
    assert cfg["architecture"] == EXPORTED_AS[variant]
    assert cfg["d_in"] == 64 and cfg["d_sae"] == 96 and cfg["apply_b_dec_to_input"] is True
    assert cfg["normalize_activations"] == "none", "the input scale is folded in"
    assert cfg["metadata"]["hook_name"] == "synthetic.hook_resid"
    expected_keys = {
        "standard": {"W_enc", "b_enc", "W_dec", "b_dec"},
        "topk": {"W_enc", "b_enc", "W_dec", "b_dec"},
        "jumprelu": {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"},
        "gated": {"W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec"},
    }[cfg["architecture"]]
    assert set(tensors) == expected_keys
    assert tensors["W_enc"].shape == (64, 96) and tensors["W_dec"].shape == (96, 64)
    x, _ = holdout_rows(request.store)
    saved = load_sae(result.sae_dirs[name])
    with torch.no_grad():
        torch.testing.assert_close(saelens_forward(tensors, cfg, x), saved(x), rtol=1e-4, atol=1e-4)


def test_several_saes_per_pass_train_as_separate_runs_would(small_store, tmp_path):
    def run(out, *texts):
        request = TrainRequest(
            store=str(small_store),
            hook=None,
            out=tmp_path / out,
            specs=[parse_spec(t) for t in texts],
            settings=TrainSettings(tokens=3000, batch_size=200, seed=5),
        )
        return {
            name: load_file(d / "sae.safetensors") for name, d in train(request).sae_dirs.items()
        }

    together = run("together", "topk:k=4,latents=64", "gsae:k=4,latents=64,beta_eff=0.5")
    alone = {
        **run("topk", "topk:k=4,latents=64"),
        **run("gsae", "gsae:k=4,latents=64,beta_eff=0.5"),
    }
    assert together.keys() == alone.keys()
    for name, tensors in together.items():
        for key, value in tensors.items():
            assert torch.equal(value, alone[name][key]), f"{name}.{key}"


# -- bad input -------------------------------------------------------------------------------------


def write_store_with_bad_rows(path, nan_activation_rows=(), inf_gradient_rows=()):
    """A synthetic store whose given training rows hold a NaN activation or an Inf gradient.

    The writer refuses non-finite values, so they are written afterwards with plain zarr, as a
    store damaged or produced elsewhere would have them (chunk checksums stay valid)."""
    write_synthetic_store(path, synthetic_spec(4096, holdout_rows=512))
    group = zarr.open_group(path, mode="r+")
    for name, rows, bad in (
        ("activations", nan_activation_rows, float("nan")),
        ("gradients", inf_gradient_rows, float("inf")),
    ):
        for row in rows:
            group[f"hooks/synthetic.hook_resid/{name}"][row, 3] = bad
    positions = ActivationStore.open(path).read(["position"], 0, 4096)["position"]
    assert np.all(positions[[*nan_activation_rows, *inf_gradient_rows]] != 0)


def assert_one_line_error(result, *fragments, during_training=False, exit_code=2):
    """Exit code 2 (1 for damaged data) and one `error:` line; before training nothing else is
    printed, during training the progress lines come before it."""
    assert result.exit_code == exit_code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 or during_training, result.stderr
    assert lines[-1].startswith("error: ") and result.stderr.count("error:") == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--sae", "topkk:k=4"], ["unknown SAE variant 'topkk'", "did you mean 'topk'"]),
        (["--sae", "topk:k=4,latens=64"], ["unknown key 'latens'", "did you mean 'latents'"]),
        (["--sae", "topk:k=80,latents=64"], ["k=80 is more than latents=64"]),
        (["--sae", "topk", "--hook", "blocks.9.hook_resid_post"], ["has no hook 'blocks.9"]),
        (["--sae", "topk", "--tokens", "100"], ["do not fill one batch"]),
        ([], ["no SAE to train"]),
        (["--sae", "topk", "--sae", "topk"], ["would both be named topk-k32-1024"]),
        (["--sae", "topk", "--storage-options", "[1]"], ["--storage-options must be a JSON"]),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(
    small_store, tmp_path, run_cli, extra, fragments
):
    before = snapshot(small_store)
    out = tmp_path / "run"
    args = ["train", "--store", small_store, "--out", out, "--batch-size", 256, *extra]
    assert_one_line_error(run_cli(*args), *fragments)
    assert not out.exists() and snapshot(small_store) == before


def test_gsae_on_a_store_without_gradients_is_refused_before_training(tmp_path, run_cli):
    path = tmp_path / "nograd.zarr"
    hooks = {"synthetic.hook_resid": HookSpec(d=64, gradients=False)}
    write_synthetic_store(path, synthetic_spec(2048, hooks=hooks))
    result = run_cli(*train_args(path, tmp_path / "run", "topk:k=4", "gsae:k=4"))
    assert_one_line_error(result, "has no gradients for synthetic.hook_resid")
    assert not (tmp_path / "run").exists()
    assert run_cli(*train_args(path, tmp_path / "run", "topk:k=4,latents=64")).exit_code == 0


def test_an_output_directory_holding_another_run_is_never_touched(small_store, tmp_path, run_cli):
    out = tmp_path / "run"
    assert run_cli(*train_args(small_store, out, "topk:k=4,latents=64")).exit_code == 0
    before = snapshot(out)
    attempts = [
        (train_args(small_store, out, "topk:k=8,latents=64"), "holds a different run"),
        ([*train_args(small_store, out, "topk:k=8,latents=64"), "--resume"], "differs in saes"),
        (
            [*train_args(small_store, out, "topk:k=4,latents=64", tokens=4096), "--resume"],
            "settings.tokens",
        ),
        (train_args(small_store, out, "topk:k=4,latents=64"), "pass --resume to continue"),
    ]
    for args, fragment in attempts:
        assert_one_line_error(run_cli(*args), fragment)
        assert snapshot(out) == before
    done = run_cli(*train_args(small_store, out, "topk:k=4,latents=64"), "--resume")
    assert done.exit_code == 0 and "already complete" in done.stdout
    named_args = train_args(small_store, out, "topk:k=4,latents=64,name=topk-k4-64")
    named = run_cli(*named_args, "--resume")
    assert named.exit_code == 0 and "already complete" in named.stdout, "the same SAE, named"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    other = run_cli(*train_args(small_store, tmp_path / "other", "topk:k=4,latents=64"))
    assert_one_line_error(other, "is not empty and holds no training run")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    assert_one_line_error(run_cli(*train_args(small_store, tmp_path / "file", "topk")), "is a file")


def named_rows(result):
    return {int(r) for r in result.stderr.split("store rows ")[1].split(";")[0].split(", ")}


def test_nan_or_inf_in_a_batch_stops_with_the_rows_named_and_a_checkpoint(tmp_path, run_cli):
    store = tmp_path / "bad.zarr"
    write_store_with_bad_rows(store, NAN_ACTIVATION_ROWS, INF_GRADIENT_ROWS)
    out = tmp_path / "run"
    before = snapshot(store)
    result = run_cli(*train_args(store, out, "gsae:k=4,latents=64", tokens=3584 * 2))
    assert_one_line_error(
        result,
        "holds NaN or Inf (or a damaged row scale) in store rows",
        "--resume",
        during_training=True,
        exit_code=1,
    )
    assert named_rows(result) <= {*NAN_ACTIVATION_ROWS, *INF_GRADIENT_ROWS}
    latest = Checkpoints(out).latest()
    assert latest is not None and not latest["complete"], "the state before the batch is kept"
    assert not (out / "saes").exists() and snapshot(store) == before


def test_gradients_are_read_only_when_an_sae_needs_them(tmp_path, run_cli):
    store = tmp_path / "badgrad.zarr"
    write_store_with_bad_rows(store, inf_gradient_rows=INF_GRADIENT_ROWS)
    topk = run_cli(*train_args(store, tmp_path / "topk", "topk:k=4,latents=64", tokens=3584))
    assert topk.exit_code == 0, "a TopK run never reads the gradients"
    gsae = run_cli(*train_args(store, tmp_path / "gsae", "gsae:k=4,latents=64", tokens=3584))
    assert_one_line_error(
        gsae,
        "holds NaN or Inf (or a damaged row scale) in store rows 3001;",
        during_training=True,
        exit_code=1,
    )


class FakeClock:
    """A perf_counter that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_throughput_counts_the_time_blocked_on_the_loader(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(trainer_module.time, "perf_counter", clock)
    throughput = trainer_module.Throughput(torch.device("cpu"))
    for wait, compute in ((3.0, 1.0), (0.5, 1.5)):  # two steps of 256 rows
        with throughput.waiting():
            clock.now += wait
        clock.now += compute
        throughput.count(256)
    assert throughput.lap() == (512 / 6.0, 3.5 / 6.0)
    clock.now += 2.0  # a lap starts the next interval afresh
    throughput.count(100)
    assert throughput.lap() == (50.0, 0.0)


@pytest.mark.cuda
def test_training_on_cuda_decodes_encoded_batches_there(small_store, tmp_path):
    request = TrainRequest(
        store=str(small_store),
        hook=None,
        out=tmp_path / "run",
        specs=[parse_spec("topk:k=8,latents=128"), parse_spec("gsae:k=8,latents=128")],
        settings=TrainSettings(tokens=4096, batch_size=256, log_every=4, device="cuda"),
    )
    result = train(request)
    records = read_metrics(result.run_dir / "metrics.jsonl")
    topk = [r for r in records if r["sae"] == "topk-k8-128"]
    assert topk[-1]["nmse"] < topk[0]["nmse"]
    assert all(0 <= r["data_wait_fraction"] <= 1 for r in records)

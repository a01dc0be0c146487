"""One `--device` resolver for harvest, train and eval: names, availability, GPU indices."""

import pytest
import torch

from saekit.base.devices import resolve_device
from saekit.base.errors import SaekitError
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store


@pytest.fixture
def two_gpus(monkeypatch):
    """torch.cuda as on a machine with two GPUs whose current device is GPU 1."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("auto", "cuda:1"), ("cuda", "cuda:1"), ("cuda:0", "cuda:0"), ("cuda:1", "cuda:1")],
)
def test_cuda_devices_get_an_explicit_index(two_gpus, name, expected):
    device = resolve_device(name)
    assert device == torch.device(expected) and device.index is not None


def test_cpu_is_cpu_with_or_without_gpus(two_gpus):
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_without_a_gpu_is_the_cpu(no_gpu):
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cuda:2", "this machine has 2 CUDA GPU(s), cuda:0 to cuda:1"),
        ("cuda:-1", "--device must be auto, cpu, cuda (the current GPU) or cuda:N, not 'cuda:-1'"),
        ("cuda:", "--device must be"),
        ("gpu", "--device must be"),
        ("cuda:1 ", "--device must be"),
        ("CUDA", "--device must be"),
    ],
)
def test_bad_names_and_indices_are_refused(two_gpus, name, message):
    with pytest.raises(SaekitError) as error:
        resolve_device(name)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_refused(no_gpu, name):
    with pytest.raises(SaekitError, match="has no CUDA GPU; use --device cpu or auto"):
        resolve_device(name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store and a run trained on it on the CPU."""
    from saekit.train import TrainRequest, TrainSettings, parse_spec, train

    root = tmp_path_factory.mktemp("devices")
    write_synthetic_store(root / "store.zarr", synthetic_spec(2048, holdout_rows=256))
    settings = TrainSettings(tokens=1024, batch_size=256, device="cpu")
    spec = parse_spec("topk:k=4,latents=64")
    train(TrainRequest(str(root / "store.zarr"), None, root / "run", [spec], settings))
    return root


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("device", ["cuda:0", "cuda:7", "tpu"])
def test_train_and_eval_validate_the_device_like_harvest(run_cli, trained, tmp_path, device):
    expected = "--device must be" if device == "tpu" else "no CUDA GPU"
    store, out = trained / "store.zarr", tmp_path / "run"
    train = run_cli(
        "train", "--store", store, "--out", out, "--sae", "topk:k=4,latents=64",
        "--tokens", "1024", "--batch-size", "256", "--device", device,
    )  # fmt: skip
    assert_refused(train, expected)
    assert not out.exists()
    report = tmp_path / "report"
    assert_refused(
        run_cli("eval", trained / "run", "--out", report, "--no-online", "--device", device),
        expected,
    )
    assert not report.exists()


def assert_refused(result, fragment: str) -> None:
    """Exit code 2 and one `error:` line naming `fragment` (blank lines aside)."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], result.stderr


@pytest.mark.cuda
def test_on_a_gpu_machine_cuda_is_the_current_gpu_and_indices_are_checked():
    count = torch.cuda.device_count()
    assert resolve_device("cuda") == torch.device("cuda", torch.cuda.current_device())
    assert resolve_device(f"cuda:{count - 1}") == torch.device("cuda", count - 1)
    with pytest.raises(SaekitError, match=f"this machine has {count} CUDA GPU"):
        resolve_device(f"cuda:{count}")

"""SAE specs and config files: parsing, defaults, derived names, and one-line errors."""

import math

import pytest

from saekit.base.errors import SaekitError
from saekit.train.config import TrainSettings, load_config
from saekit.train.spec import parse_spec


def resolved(text, d=64, lr=None):
    return parse_spec(text).resolve(d, lr)


def test_spec_sets_options_and_derives_defaults_and_name():
    spec = resolved("topk:k=32,latents=4096")
    assert spec.name == "topk-k32-4096" and spec.variant == "topk"
    assert spec.options.k == 32 and spec.options.aux == "auxk" and spec.options.k_aux == 512
    assert spec.options.lr == pytest.approx(2e-4 * math.sqrt(16384 / 4096))
    default = resolved("topk")
    assert default.latents == 16 * 64 and default.name == "topk-k32-1024"
    assert resolved("topk:lr=0.01", lr=0.5).options.lr == 0.01, "an lr key wins over --lr"
    assert resolved("topk", lr=0.5).options.lr == 0.5


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("mutual-choice:k=8,latents=256", "batchtopk-k8-256"),
        ("gsae:k=32,beta_eff=1", "gsae-k32-beta_eff1-1024"),
        ("gsae:k=32", "gsae-k32-beta_eff1-1024"),
        ("gsae:k=16,beta=300,selection_only=yes", "gsae-k16-beta300-1024"),
        ("gsae:k=16,beta=300,selection_only=no", "gsae-k16-beta300-1024-no_selection_only"),
        ("topk:aux=zipf,latents=512", "topk-k32-512-auxzipf"),
        ("relu:l1=2.5", "relu-l1_2.5-1024"),
        (
            "feature-choice:capacities=zipf,zipf_a=0.8",
            "feature-choice-k32-1024-capacitieszipf-zipf_a0.8",
        ),
        ("jumprelu:l0=0.1,name=mine", "mine"),
        ("topk:k=32,lr=0.001", "topk-k32-1024-lr0.001"),
    ],
)
def test_derived_names(text, name):
    assert resolved(text).name == name


def test_values_are_converted_by_type():
    spec = resolved("gsae:k=1e1,beta=3,selection_only=false,dead_tokens=1_000")
    assert spec.options.k == 10 and spec.options.beta == 3.0
    assert spec.options.selection_only is False and spec.options.dead_tokens == 1000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("topkk:k=3", "unknown SAE variant 'topkk'; did you mean 'topk'"),
        ("topk:latent=8", "unknown key 'latent' for topk; did you mean 'latents'"),
        ("relu:k=8", "unknown key 'k' for relu"),
        ("topk:k=abc", "k: expected an integer, got 'abc'"),
        ("topk:k=2.5", "k: expected an integer"),
        ("topk:aux=zipff", "'zipff' is not one of auxk, zipf, none; did you mean 'zipf'"),
        ("gsae:beta=1,beta_eff=2", "give beta or beta_eff, not both"),
        ("gsae:selection_only=maybe", "expected true or false"),
        ("topk:k=0", "k must be at least 1"),
        ("topk:k", "'k' is not key=value"),
        ("topk:name=../x", "name must be letters"),
    ],
)
def test_bad_specs_say_what_is_wrong(text, message):
    with pytest.raises(SaekitError, match=r"^--sae") as error:
        parse_spec(text)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_k_above_latents_is_refused():
    with pytest.raises(SaekitError, match="k=64 is more than latents=32"):
        resolved("batchtopk:k=64,latents=32")


def test_config_file_holds_settings_and_sae_tables(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        'tokens = 10_000\nbatch_size = 256\nseed = 3\n\n[[sae]]\nvariant = "topk"\nk = 8\n'
        'latents = 128\n\n[[sae]]\nvariant = "gsae"\nbeta_eff = 0.3\nselection_only = false\n'
    )
    settings, specs = load_config(path)
    assert settings == {"tokens": 10_000, "batch_size": 256, "seed": 3}
    assert TrainSettings(**settings).batch_size == 256
    assert [s.resolve(64).name for s in specs] == [
        "topk-k8-128",
        "gsae-k32-beta_eff0.3-1024-no_selection_only",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tokenz = 5\n", "unknown setting 'tokenz'; did you mean 'tokens'"),
        ("batch_size = 'big'\n", "batch_size: expected an integer"),
        ("[[sae]]\nk = 3\n", "SAE #1 has no 'variant' key"),
        ('[[sae]]\nvariant = "topk"\nkk = 3\n', "SAE #1: unknown key 'kk' for topk"),
        ("tokens = [\n", "is not valid TOML"),
    ],
)
def test_bad_config_files_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SaekitError) as error:
        load_config(path)
    assert message in str(error.value)


def test_bad_settings_are_refused():
    with pytest.raises(SaekitError, match="--batch-size must be positive"):
        TrainSettings(batch_size=0)
    with pytest.raises(SaekitError, match="--device must be auto, cpu, cuda"):
        TrainSettings(device="tpu")


def test_train_help_names_each_alias_after_its_own_variant():
    """Mutual Choice is BatchTopK: `sae train --help` says so next to batchtopk, not after the
    last name (topk)."""
    from saekit.cli.train import SPEC_HELP

    assert "batchtopk (alias mutual-choice)," in SPEC_HELP
    assert "topk (alias" not in SPEC_HELP.replace("batchtopk (alias", "")

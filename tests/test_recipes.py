"""`sae recipe` end to end on the tiny LM: every recipe's small preset (shrunk so the three run
together in a few minutes), its report, figures and claims table; resume; bad input."""

import dataclasses
import json

import matplotlib.image
import pytest

from helpers import assert_one_line_error, snapshot
from saekit.cache_format import ActivationStore, HookSpec
from saekit.cache_format.synthetic import synthetic_spec, write_synthetic_store
from saekit.harvest import plan_harvest
from saekit.recipes import SMALL, RecipeRequest, run_recipes
from saekit.recipes.choice import ChoiceGrid
from saekit.recipes.claims import FAILS, HOLDS, INCONCLUSIVE
from saekit.recipes.e2e import E2EGrid
from saekit.recipes.gated import GatedGrid
from saekit.recipes.gsae import GSAEGrid
from saekit.recipes.inputs import check_inputs, harvest_config
from saekit.recipes.transcoders import TranscodersGrid

# The small preset, shrunk: an 8k-token store, 2·d latents, 4k training tokens, two seeds, the
# sweeps cut to two points each.
FAST = dataclasses.replace(
    SMALL,
    context_size=32,
    harvest_tokens=8192,
    holdout_tokens=1024,
    harvest_batch=16,
    expansion=2,
    train_tokens=4096,
    batch_size=256,
    online_tokens=256,
    eval_batch=8,
    steering_latents=4,
    steering_contexts=4,
    grids={
        "gsae": GSAEGrid(
            k=(4, 8),
            headline_k=4,
            width_factors=(0.5, 1.0),
            beta_effs=(0.3,),
            steering_alphas=(0.5, 1.0),
            lengths=(1.0, 2.0),
        ),
        "choice": ChoiceGrid(k=(4, 8)),
        "gated": GatedGrid(l1=(2.0, 8.0)),
        "transcoders": TranscodersGrid(k=(4, 8), matryoshka_k=4, prefixes=(0.25, 0.5, 1.0)),
        # a fine-tune of a quarter of the 4k training tokens: 8 steps of 4 contexts of 32
        "e2e": E2EGrid(k=(4, 8), loss_aware=0.3, finetune_share=0.25, finetune_contexts=4),
    },
)

RESID = "blocks.1.hook_resid_post"  # the tiny LM's middle layer
CLAIMS = {
    "gsae": [
        "lower loss added than TopK at equal L0",
        "lower loss added than TopK at equal L0, without gradients at inference",
        "lower loss added than TopK at equal L0, with augmented values",
        "fewer dead latents than TopK",
        "lower loss added than TopK at every number of latents",
        "latents steer the LM more effectively than TopK's",
        "lower loss added than TopK at equal L0 — at 2× the training tokens",
        "lower loss added than TopK at equal L0, without gradients at inference — at 2× the "
        "training tokens",
        "fewer dead latents than TopK — at 2× the training tokens",
    ],
    "choice": [
        "Feature Choice has no dead latents",
        "Mutual Choice reconstructs better than TopK at equal L0",
        "Feature Choice reconstructs better than TopK at equal L0",
        "aux_zipf leaves fewer dead latents than AuxK",
        "aux_zipf leaves fewer under-used latents than AuxK",
    ],
    "gated": [
        "Gated is a Pareto improvement: more CE loss recovered at equal L0",
        "Gated is a Pareto improvement: lower NMSE at equal L0",
        "Gated needs about half as many active latents for equal fidelity",
        "Gated does not shrink codes: γ closer to 1 than the baseline at equal L0",
    ],
    "transcoders": [
        "Skip transcoders beat transcoders: lower NMSE at equal L0",
        "Skip transcoders beat transcoders: less loss added when spliced, at equal L0",
        "Transcoders reach the fidelity of an SAE on the MLP output when spliced",
        "Each Matryoshka prefix of m latents reconstructs about as well as a BatchTopK SAE of m "
        "latents trained alone",
        "The full Matryoshka dictionary stays within a few percent of a full-width BatchTopK SAE",
    ],
    "e2e": [
        "An SAE trained against the LM's loss reaches the local SAE's loss added at a lower L0",
        "A short KL fine-tune of a local SAE lowers its loss added at equal L0",
        "The store-only estimate ranks the SAEs as the online loss added does",
        "An SAE trained against the LM's loss reaches the local SAE's spliced KL at a lower L0",
        "A short KL fine-tune of a local SAE lowers its spliced KL at equal L0",
    ],
}
FIGURES = [
    "gsae_fig4_l0.png",
    "gsae_fig4_latents.png",
    "gsae_dead.png",
    "gsae_beta_drift.png",
    "gsae_fig5_steering.png",
    "gsae_training_length.png",
    "choice_l0.png",
    "choice_usage.png",
    "choice_l0_per_token.png",
    "gated_pareto.png",
    "transcoders_shapes.png",
    "transcoders_matryoshka.png",
    "e2e_loss_l0.png",
]


@pytest.fixture(scope="module")
def recipes_run(tiny_lm, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("recipes") / "out"
    request = RecipeRequest(
        recipes=("all",),
        out=out,
        model=str(tiny_lm),
        dataset=str(corpus),
        preset=FAST,
        device="cpu",
    )
    return request, run_recipes(request)


@pytest.mark.slow  # every recipe, end to end (the recipes_run fixture)
def test_every_recipe_reports_its_claims_with_verdicts_and_figures(recipes_run):
    request, outcome = recipes_run
    out = request.out
    # gsae, choice: two stages, 2 seeds each; gated, transcoders: one; e2e: one and its fine-tune
    assert len(outcome.trained_runs) == 4 + 4 + 2 + 2 + 2 + 2
    report = json.loads((out / "report.json").read_text())
    for recipe, texts in CLAIMS.items():
        claims = report["recipes"][recipe]["claims"]
        assert set(texts) <= {c["claim"] for c in claims}, recipe
        for claim in claims:
            assert claim["verdict"] in (HOLDS, FAILS, INCONCLUSIVE)
    markdown = (out / "report.md").read_text()
    claims_table = markdown[markdown.index("## Claims") :]
    for texts in CLAIMS.values():
        for text in texts:
            assert text in claims_table
    assert markdown.rstrip().endswith("|"), "the report ends in the claims table"
    spliced = report["recipes"]["gated"]["rows"][0]["online"]["tokens"]
    assert f"spliced into the LM: {spliced:,} predicted tokens" in markdown, "the tokens used"
    assert report["warnings"] == [] and "Warning" not in markdown
    for figure in FIGURES:
        assert f"figures/{figure}" in markdown
        image = matplotlib.image.imread(out / "figures" / figure)
        assert image.shape[0] >= 300 and image.shape[1] >= 500, figure


@pytest.mark.slow  # the recipes_run fixture
def test_the_gsae_recipe_measures_every_mode_and_the_beta_drift(recipes_run):
    request, _ = recipes_run
    report = json.loads((request.out / "report.json").read_text())["recipes"]["gsae"]
    modes = {(r["variant"], r["mode"]) for r in report["rows"]}
    assert {("gsae", "grad"), ("gsae", "plain"), ("gsae", "plain-uncorrected")} <= modes
    uncorrected = [r for r in report["rows"] if r["mode"] == "plain-uncorrected"]
    assert not any(r["options"]["selection_only"] for r in uncorrected), "no gains to forget"
    steered = {r["name"] for r in report["rows"] if r["steering"] and r["variant"] == "gsae"}
    assert steered == {"gsae-k4-beta_eff1-128"}, "the headline g-SAE: the library's default"
    drift = report["findings"]["beta_drift"]
    tracked = {name: d for name, d in drift.items() if "beta_tracking" in name}
    assert len(tracked) == 2
    for name, values in tracked.items():
        beta_eff = 0.3 if "beta_eff0.3" in name else 1.0
        assert values["first"] == pytest.approx(beta_eff, rel=1e-3), "tracked: β·median(a) = β_eff"
    steered = [r for r in report["rows"] if r["steering"]]
    assert steered and all(len(r["steering"]["per_alpha"]) == 2 for r in steered)


@pytest.mark.slow  # the recipes_run fixture
def test_the_headline_claims_are_judged_at_every_training_length(recipes_run):
    request, _ = recipes_run
    report = json.loads((request.out / "report.json").read_text())["recipes"]["gsae"]
    lengths = {r["run"]: r["training"]["tokens"] for r in report["rows"]}
    assert (
        lengths["main-s0"] == FAST.train_tokens and lengths["length2-s1"] == 2 * FAST.train_tokens
    )
    longer = [r for r in report["rows"] if r["run"].startswith("length2")]
    assert {r["variant"] for r in longer} == {"topk", "gsae"} and not any(
        r["steering"] for r in longer
    ), "the headline arms only, not steered again"
    long_claims = [c for c in report["claims"] if c["claim"].endswith("2× the training tokens")]
    assert len(long_claims) == 3 and all(c["points"] for c in long_claims)
    gains = report["findings"]["last_quarter_gain"]
    assert set(gains) == {r["name"] for r in longer}
    assert all(set(g) == {"1", "2"} for g in gains.values())


@pytest.mark.slow  # the recipes_run fixture
def test_choice_fits_zipf_capacities_and_evaluates_both_modes(recipes_run):
    request, _ = recipes_run
    rows = json.loads((request.out / "report.json").read_text())["recipes"]["choice"]["rows"]
    zipf = [r for r in rows if r["options"].get("capacities") == "zipf"]
    assert zipf and all(r["options"]["zipf_a"] != 1.0 for r in zipf), "fitted, not the default"
    assert {r["mode"] for r in rows if r["variant"] == "feature-choice"} == {"threshold", "batch"}


@pytest.mark.slow  # the recipes_run fixture
def test_the_transcoders_recipe_compares_shapes_and_prefixes_on_one_store(recipes_run):
    request, _ = recipes_run
    store = ActivationStore.open(request.out / "store.zarr")
    mlp_in, mlp_out = "blocks.1.mlp.hook_in", "blocks.1.hook_mlp_out"
    assert {mlp_in, mlp_out, "blocks.1.hook_resid_post"} <= set(store.hooks)
    assert store.spec.hooks[mlp_in].gradients is False, "no recipe reads the MLP's gradients"
    assert store.spec.hooks["blocks.1.hook_resid_post"].gradients, "g-SAEs read these"
    report = json.loads((request.out / "report.json").read_text())["recipes"]["transcoders"]
    shapes = {
        (r["options"].get("hooks"), r["options"].get("target"), r["options"].get("skip", False))
        for r in report["rows"]
        if r["variant"] == "topk"
    }
    assert shapes == {(None, None, False), (mlp_in, mlp_out, False), (mlp_in, mlp_out, True)}
    spliced = [r for r in report["rows"] if r["variant"] == "topk"]
    assert all(r["online"]["loss_added"] == r["online"]["loss_added"] for r in spliced)
    (nested,) = {
        tuple(r["offline"]["prefix_nmse"]) for r in report["rows"] if r["variant"] == "matryoshka"
    }
    assert nested == ("32", "64", "128"), "prefixes of 1/4, 1/2 and all of 2·64 latents"
    alone = {r["options"]["latents"] for r in report["rows"] if r["variant"] == "batchtopk"}
    assert alone == {32, 64, 128}
    prefix_claim = next(c for c in report["claims"] if c["claim"].startswith("Each Matryoshka"))
    assert [p["where"] for p in prefix_claim["points"]] == ["32 latents", "64 latents"]
    assert all(p["slack"] > 0 for p in prefix_claim["points"])


@pytest.mark.slow  # the recipes_run fixture, then the recipes again
def test_a_second_run_trains_and_evaluates_nothing(recipes_run):
    request, _ = recipes_run
    before = snapshot(request.out / "gsae") | snapshot(request.out / "choice")
    outcome = run_recipes(request)
    assert outcome.trained_runs == [] and outcome.evaluated_rows == 0
    after = snapshot(request.out / "gsae") | snapshot(request.out / "choice")
    assert after == before, "runs and evaluation caches are untouched"


@pytest.mark.slow  # the gated recipe twice, once on a dask LocalCluster of two workers
def test_a_recipe_on_a_cluster_reproduces_the_single_process_numbers(tiny_lm, corpus, tmp_path):
    """Each run's SAEs trained in groups on two workers and every SAE evaluated as its own task
    give the rows, hence the report, of one process."""

    def recipe(out, **cluster):
        request = RecipeRequest(
            recipes=("gated",), out=out, model=str(tiny_lm), dataset=str(corpus), preset=FAST,
            device="cpu", **cluster,
        )  # fmt: skip
        return run_recipes(request)

    here, there = tmp_path / "here", tmp_path / "cluster"
    alone = recipe(here)
    spread = recipe(there, cluster="local:2")
    assert spread.trained_runs == alone.trained_runs and spread.trained_runs
    assert spread.evaluated_rows == alone.evaluated_rows > 0
    for run in sorted((here / "gated" / "evals").iterdir()):
        cached = json.loads(run.read_text())
        assert json.loads((there / "gated" / "evals" / run.name).read_text()) == cached, run.name

    def numbers(out):  # the report without its measured wall times
        lines = (out / "report.md").read_text().splitlines()
        return [line for line in lines if "wall time" not in line]

    assert numbers(there) == numbers(here)


def test_bad_input_is_one_line_and_writes_nothing(run_cli, tiny_lm, corpus, tmp_path):
    out = tmp_path / "out"
    common = ["--out", out, "--model", tiny_lm, "--dataset", corpus]
    assert_one_line_error(run_cli("recipe", "gsea", *common), "unknown recipe 'gsea'", "gsae")
    assert_one_line_error(
        run_cli("recipe", "gated", *common, "--preset", "paper"),
        "blocks.7.hook_resid_post",
        "2 layers",
    )
    assert_one_line_error(run_cli("recipe", "gated", *common, "--preset", "huge"), "preset")
    two_hooks = tmp_path / "two-hooks.zarr"
    hooks = {"blocks.0.hook_resid_pre": HookSpec(d=64), "blocks.0.hook_resid_post": HookSpec(d=64)}
    write_synthetic_store(two_hooks, synthetic_spec(2048, hooks=hooks, holdout_rows=256))
    assert_one_line_error(
        run_cli("recipe", "gated", "--out", out, "--model", tiny_lm, "--store", two_hooks),
        "has no hook blocks.1.hook_resid_post",
    )
    assert_one_line_error(
        run_cli("recipe", "transcoders", "--out", out, "--model", tiny_lm, "--store", two_hooks),
        "has no hook blocks.1.hook_mlp_out, blocks.1.mlp.hook_in",
        "recipe transcoders",
    )
    assert_one_line_error(run_cli("recipe", "gsae", "--out", out, "--model", tiny_lm), "--dataset")
    assert_one_line_error(run_cli("recipe", "gated", *common, "--cluster", "local:0"), "local:W")
    assert not out.exists(), "nothing was written"
    inside = two_hooks / "hooks" / "recipes"
    before = snapshot(two_hooks)
    assert_one_line_error(
        run_cli("recipe", "gated", *common[2:], "--out", inside), "inside the store"
    )
    (tmp_path / "link").symlink_to(two_hooks)
    through_link = tmp_path / "link" / "recipes"
    assert_one_line_error(
        run_cli("recipe", "gated", *common[2:], "--out", through_link), "inside the store"
    )
    assert snapshot(two_hooks) == before, "the store is untouched"
    not_a_record = tmp_path / "other"
    not_a_record.mkdir()
    (not_a_record / "recipe.json").write_text("[1, 2]")
    assert_one_line_error(
        run_cli("recipe", "gated", *common[2:], "--out", not_a_record), "holds no recipe results"
    )


def test_the_harvest_keeps_gradients_only_where_a_recipe_reads_them(tiny_lm, corpus, tmp_path):
    def planned(*recipes):
        request = RecipeRequest(
            recipes=recipes, out=tmp_path / "out", model=str(tiny_lm), dataset=str(corpus),
            preset=FAST,
        )  # fmt: skip
        return plan_harvest(harvest_config(request, check_inputs(request))).spec.hooks

    mlp_out, mlp_in, resid = "blocks.1.hook_mlp_out", "blocks.1.mlp.hook_in", RESID
    assert {h: s.gradients for h, s in planned("transcoders").items()} == {
        mlp_out: False,
        mlp_in: False,
    }
    both = planned("gsae", "transcoders")
    assert list(both) == [resid, mlp_out, mlp_in], "each recipe's hooks, each once"
    assert {h: s.gradients for h, s in both.items()} == {resid: True, mlp_out: False, mlp_in: False}
    assert not (tmp_path / "out").exists(), "planning writes nothing"

"""`sae demo` (what `make demo` runs) goes end to end offline and produces a full report."""

import json

import pytest

from saekit.cache_format import ActivationStore

pytestmark = pytest.mark.slow  # the whole demo: harvest, seven SAEs, eval, report

VARIANTS = {"topk", "gsae", "batchtopk", "feature-choice", "gated", "relu", "jumprelu"}


def test_demo_runs_the_whole_pipeline(run_cli, tmp_path):
    result = run_cli("demo", "--out", tmp_path)
    assert result.exit_code == 0, result.stderr
    store = ActivationStore.open(tmp_path / "store.zarr")
    assert store.complete and store.n_rows("holdout") == 4096
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = {row["label"]: row for row in report["rows"]}
    assert {row["variant"] for row in rows.values()} == VARIANTS
    assert {"gsae-k8-beta_eff1-256 [grad]", "gsae-k8-beta_eff1-256 [plain]"} <= set(rows)
    assert {"batchtopk-k8-256 [threshold]", "batchtopk-k8-256 [batch]"} <= set(rows)
    topk = rows["topk-k8-256"]
    assert topk["offline"]["l0"] == 8 and topk["offline"]["nmse"] < 0.05
    assert topk["online"]["ce_recovered_zero"] > 0.95, "a trained TopK SAE keeps the LM working"
    assert all(row["steering"] for row in rows.values() if row["mode"] != "plain"
               and row["mode"] != "batch")  # fmt: skip
    for plot in ("l0_vs_nmse.png", "l0_vs_loss_added.png", "dead_latents.png"):
        assert (tmp_path / "report" / plot).stat().st_size > 10_000
    assert "report:" in result.stdout
    site = tmp_path / "report" / "inspect"
    assert f"dashboards: {site / 'index.html'}" in result.stdout
    inspected = json.loads((site / "inspect.json").read_text())["saes"]
    assert {s["variant"] for s in inspected} == VARIANTS
    for sae in inspected:  # the pass counts what eval counts, on the same held-out rows
        label = sae["name"] if sae["mode"] == "inference" else f"{sae['name']} [{sae['mode']}]"
        offline = rows[label]["offline"]
        assert sae["latents"] == 256 and sae["rows"] == offline["tokens"]
        assert sae["dead"] / 256 == offline["dead_fraction"]
        assert sae["dense"] / 256 == offline["dense_fraction"]
    assert report["inspect"] == "inspect/index.html"
    assert "(inspect/index.html)" in (tmp_path / "report" / "report.md").read_text()

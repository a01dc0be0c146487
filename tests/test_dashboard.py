"""`sae inspect` end to end on a tiny LM: planted latents show the right contexts, statistics,
per-token activations and logit effects; the streaming pass equals a dense computation over the
same rows; `sae eval --inspect` links the site; bad input is refused before anything is written."""

import functools
import http.server
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import assert_one_line_error, harvest_small_store, relu_sae, save, snapshot
from saekit.cache_format import ActivationStore
from saekit.dashboard import read_data_script
from saekit.dashboard.accumulators import log_bin
from saekit.dashboard.scan import ScanSettings, scan
from saekit.dashboard.subjects import load_subjects
from saekit.train.spec import parse_spec

EMBED = "hook_embed"  # x = W_E[token]: a latent reading one token's embedding fires on that token
RESID = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def embed_store(tiny_lm, corpus, tmp_path_factory):
    """A float32 store of the tiny LM's token embeddings (and the residual stream after block 1):
    4800 tokens, 960 held out, contexts of 32."""
    out = tmp_path_factory.mktemp("inspect") / "store.zarr"
    return harvest_small_store(tiny_lm, corpus, out, dtype="float32", hooks=(EMBED, RESID))


@pytest.fixture(scope="module")
def rows(embed_store):
    """Every committed row's token, sequence and position, and the held-out rows' count."""
    store = ActivationStore.open(embed_store)
    values = store.read(["tokens", "sequence", "position"], 0, store.n_rows_committed)
    return store, values


@pytest.fixture(scope="module")
def embedding(tiny_lm):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_lm).get_input_embeddings().weight.detach()


def planted_sae(embedding_VD, tokens):
    """One ReLU latent per token t: encoder Ê_t, threshold half-way between |E_t| and the largest
    projection of any other token's embedding on Ê_t (so it fires on t and only on t), decoder
    E_t. Plus one latent that never fires."""
    e_LD = embedding_VD[tokens]
    unit_LD = e_LD / e_LD.norm(dim=1, keepdim=True)
    projection_VL = embedding_VD @ unit_LD.T
    own_L = projection_VL[tokens, torch.arange(len(tokens))]
    projection_VL[tokens, torch.arange(len(tokens))] = -torch.inf
    other_L = projection_VL.max(0).values
    assert (own_L > other_L).all(), "planted tokens must be separable"
    theta_L = (own_L + other_L) / 2
    d = embedding_VD.shape[1]
    W_enc = torch.cat([unit_LD, unit_LD[:1]])
    b_enc = torch.cat([-theta_L, torch.tensor([-1e6])])
    W_dec = torch.cat([e_LD, e_LD[:1]]).T
    return relu_sae(d, len(tokens) + 1, W_enc, W_dec, b_enc=b_enc), own_L - theta_L


def commonest_heldout_tokens(rows, n):
    store, values = rows
    heldout = slice(0, store.n_rows("holdout"))
    tokens = values["tokens"][heldout][values["position"][heldout] > 0]
    ids, counts = np.unique(tokens, return_counts=True)
    return ids[np.argsort(-counts, kind="stable")[:n]].tolist()


def test_planted_latents_show_their_token_everywhere(
    embed_store, rows, embedding, tmp_path, run_cli, tiny_lm
):
    store, values = rows
    tokens = commonest_heldout_tokens(rows, 4)
    sae, fired_value_L = planted_sae(embedding, tokens)
    run = tmp_path / "run"
    save(run, "planted", sae, embed_store, hook=EMBED)
    out = tmp_path / "site"
    result = run_cli("inspect", run, "--out", out, "--top", "5", "--per-band", "2")
    assert result.exit_code == 0, result.stderr
    assert f"dashboards: {out / 'index.html'}" in result.stdout

    site = json.loads((out / "inspect.json").read_text())
    (summary,) = site["saes"]
    holdout = store.n_rows("holdout")
    position, token, sequence = (values[k] for k in ("position", "tokens", "sequence"))
    heldout_rows = np.flatnonzero((np.arange(len(position)) < holdout) & (position > 0))
    assert summary["rows"] == len(heldout_rows) and summary["dead"] == 1
    index = read_data_script(out / "data" / "sae-0" / "index.js")
    context_of = {}  # sequence -> its tokens by position, from the store's rows
    for s in np.unique(sequence):
        mine = sequence == s
        context_of[s] = token[mine][np.argsort(position[mine])]

    for latent, t in enumerate(tokens):
        firing_rows = heldout_rows[token[heldout_rows] == t]
        assert index["count"][latent] == len(firing_rows)
        assert index["density"][latent] == pytest.approx(len(firing_rows) / len(heldout_rows), 1e-3)
        assert index["fires_on"][latent][0] == t
        assert index["promotes"][latent][0] == t, "E_t through ln_f and the tied unembedding"
        detail = read_data_script(out / "data" / "sae-0" / "latents" / f"{latent}.js")
        assert detail["max"] == pytest.approx(fired_value_L[latent].item(), rel=1e-3)
        assert detail["logits"]["top"][0][0] == t
        assert [c["row"] for c in detail["top"]] == firing_rows[:5].tolist(), "ties: earliest"
        sampled = [c for band in detail["bands"] for c in band["contexts"]]
        assert len(sampled) == min(20, len(firing_rows))
        assert {c["row"] for c in sampled} <= set(firing_rows.tolist())
        for context in detail["top"] + sampled:
            row = context["row"]
            p = int(position[row])
            expected = context_of[sequence[row]][max(0, p - 16) : p + 5]
            assert context["tokens"] == expected.tolist(), "the window is the row's own context"
            assert context["tokens"][context["centre"]] == t
            for place, (window_token, value) in enumerate(
                zip(context["tokens"], context["values"], strict=True)
            ):
                window_position = p - context["centre"] + place
                if window_position == 0:
                    assert value is None, "position 0 is not encoded"
                elif window_token == t:
                    assert value == pytest.approx(fired_value_L[latent].item(), rel=1e-3)
                else:
                    assert value == 0
    dead = read_data_script(out / "data" / "sae-0" / "latents" / f"{len(tokens)}.js")
    assert dead["count"] == 0 and dead["top"] == [] and dead["bands"] == []
    assert dead["histogram"]["counts"] == []


def test_the_pass_equals_a_dense_computation_over_the_same_rows(embed_store, tmp_path):
    """TopK and g-SAE (grad mode) with random weights on the residual stream: every statistic
    of the streaming pass, in batches of 100, against the dense codes of all rows at once."""
    store = ActivationStore.open(embed_store)
    d = store.spec.hooks[RESID].d
    run = tmp_path / "run"
    for name, text in (("topk", "topk:k=3,latents=40"), ("gsae", "gsae:k=3,latents=40,beta=50")):
        sae = parse_spec(text).resolve(d).build(d)
        sae.init_weights_(torch.Generator().manual_seed(len(name)), 1.0, None)
        save(run, name, sae, embed_store, hook=RESID)
    subjects = load_subjects([str(run)], store, "all", torch.device("cpu"))
    assert [s.target.mode for s in subjects] == ["grad", "inference"]
    settings = ScanSettings(max_rows=700, batch_rows=100, top=4, per_band=1)
    records = scan(store, subjects, settings, torch.device("cpu"))

    every = store.read_tensors(["row", "position", "activations", "gradients"], 0,
                               store.n_rows("holdout"), RESID)  # fmt: skip
    keep = torch.nonzero(every["position"] != 0).flatten()[:700]
    x, g, row = every["activations"][keep], every["gradients"][keep], every["row"][keep]
    for subject, record in zip(subjects, records, strict=True):
        with torch.no_grad():
            f = subject.target.code(x, g).to_dense()
        assert record.rows == 700
        fires = f > 0
        torch.testing.assert_close(record.moments.count_S, fires.sum(0))
        torch.testing.assert_close(record.moments.max_S, f.max(0).values)
        expected_mean = (f.double().sum(0) / fires.sum(0).clamp_min(1)).double()
        torch.testing.assert_close(record.moments.mean_S(), expected_mean)
        for latent in range(40):
            values = f[:, latent][fires[:, latent]]
            order = np.lexsort((row[fires[:, latent]].numpy(), -values.numpy()))[:4]
            assert record.top.entries(latent)[0] == row[fires[:, latent]][order].tolist()
            bins = torch.bincount(log_bin(values), minlength=record.histogram.counts_SH.shape[1])
            assert torch.equal(record.histogram.counts_SH[latent], bins)
        if subject.target.needs_gradients:
            term = (g @ subject.sae.W_dec.detach()).abs()
            expected = (term * fires).sum(0).double() / fires.sum(0).clamp_min(1)
            torch.testing.assert_close(record.grad_moments.mean_S(), expected, rtol=1e-5, atol=0)
        else:
            assert record.grad_moments is None


def test_eval_inspect_builds_and_links_the_site(embed_store, tmp_path, run_cli, embedding, rows):
    sae, _ = planted_sae(embedding, commonest_heldout_tokens(rows, 2))
    save(tmp_path / "run", "planted", sae, embed_store, hook=EMBED)
    report = tmp_path / "report"
    result = run_cli("eval", tmp_path / "run", "--out", report, "--no-online", "--inspect")
    assert result.exit_code == 0, result.stderr
    assert (report / "inspect" / "index.html").is_file()
    assert json.loads((report / "report.json").read_text())["inspect"] == "inspect/index.html"
    assert "[inspect/index.html](inspect/index.html)" in (report / "report.md").read_text()
    assert f"dashboards: {report / 'inspect' / 'index.html'}" in result.stdout
    again = run_cli("eval", tmp_path / "run", "--out", report, "--no-online")
    assert again.exit_code == 0, again.stderr
    assert json.loads((report / "report.json").read_text())["inspect"], "a re-run keeps the link"


def test_a_subset_of_latents_and_a_token_budget(embed_store, tmp_path, run_cli, embedding, rows):
    sae, _ = planted_sae(embedding, commonest_heldout_tokens(rows, 3))
    save(tmp_path / "run", "planted", sae, embed_store, hook=EMBED)
    out = tmp_path / "site"
    result = run_cli("inspect", tmp_path / "run" / "saes" / "planted", "--out", out,
                     "--latents", "2,0", "--tokens", "200", "--split", "train")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    index = read_data_script(out / "data" / "sae-0" / "index.js")
    assert index["latent"] == [0, 2]
    assert sorted(p.name for p in (out / "data" / "sae-0" / "latents").iterdir()) == [
        "0.js",
        "2.js",
    ]
    site = json.loads((out / "inspect.json").read_text())
    assert site["saes"][0]["rows"] == 200 and site["settings"]["split"] == "train"
    store = ActivationStore.open(embed_store)
    detail = read_data_script(out / "data" / "sae-0" / "latents" / "0.js")
    assert all(c["row"] >= store.n_rows("holdout") for c in detail["top"]), "training rows"
    rebuilt = run_cli("inspect", tmp_path / "run", "--out", out, "--latents", "3,")  # the dead one
    assert rebuilt.exit_code == 0, rebuilt.stderr
    assert read_data_script(out / "data" / "sae-0" / "index.js")["count"] == [0]
    assert not (out / "data" / "sae-0" / "latents" / "0.js").exists(), "the old site is gone"
    assert not list(tmp_path.glob(".site.*")), "no staging directory is left behind"


def test_bad_inputs_write_nothing(embed_store, tmp_path, run_cli, embedding, rows, tiny_lm):
    from saekit.demo import build_tiny_lm, generate_documents

    sae, _ = planted_sae(embedding, commonest_heldout_tokens(rows, 2))
    run = tmp_path / "run"
    save(run, "planted", sae, embed_store, hook=EMBED)
    elsewhere = tmp_path / "elsewhere"
    save(elsewhere, "other-hook", sae, embed_store, hook="blocks.0.hook_resid_pre")
    not_a_site = tmp_path / "taken"
    not_a_site.mkdir()
    (not_a_site / "notes.txt").write_text("mine")
    other_lm = build_tiny_lm(tmp_path / "other-lm", generate_documents(100, seed=9), vocab_size=280)
    before = snapshot(tmp_path), snapshot(embed_store)
    out = tmp_path / "out"
    assert_one_line_error(run_cli("inspect", tmp_path / "nothing", "--out", out),
                          "is neither a run nor a saved SAE")  # fmt: skip
    assert_one_line_error(run_cli("inspect", run, "--out", out, "--latents", "1,7"),
                          "--latents 7 is out of range", "3 latents")  # fmt: skip
    assert_one_line_error(run_cli("inspect", run, "--out", out, "--latents", "x"),
                          "--latents 'x'")  # fmt: skip
    assert_one_line_error(run_cli("inspect", elsewhere, "--out", out),
                          "trained on hook blocks.0.hook_resid_pre", "lacks")  # fmt: skip
    assert_one_line_error(run_cli("inspect", run, "--out", not_a_site), "is not an inspect site")
    assert_one_line_error(run_cli("inspect", run, "--out", run / "site"), "inside")
    assert_one_line_error(run_cli("inspect", run, "--out", out, "--tokens", "0"), "--tokens")
    assert_one_line_error(run_cli("inspect", run, "--out", out, "--model", other_lm),
                          "tokenizer", "--model")  # fmt: skip
    assert_one_line_error(run_cli("eval", run, "--out", out, "--inspect", "--no-online",
                                  "--model", other_lm), "tokenizer")  # fmt: skip
    assert not out.exists()
    assert (snapshot(tmp_path), snapshot(embed_store)) == before, "nothing written or changed"


# -- the site in a real browser (the OS's headless Chromium, one session for the module) --------


@pytest.fixture(scope="module")
def browser():
    from saekit.dashboard.browser import missing_browser_reason, open_browser

    reason = missing_browser_reason()
    if reason:
        pytest.skip(f"browser test skipped: {reason}")
    with open_browser() as context:
        yield context


@pytest.fixture(scope="module")
def planted_site(embed_store, embedding, rows, tmp_path_factory):
    """A site of the planted SAE, latent 0 on the 4th commonest token ... latent 3 on the
    commonest (so sorting by density changes the first row), latent 4 dead."""
    from saekit.dashboard import InspectRequest, build_dashboard

    tokens = commonest_heldout_tokens(rows, 4)[::-1]
    sae, _ = planted_sae(embedding, tokens)
    root = tmp_path_factory.mktemp("browser")
    save(root / "run", "planted", sae, embed_store, hook=EMBED)
    build_dashboard(InspectRequest(saes=(str(root / "run"),), out=str(root / "site"), top=6))
    return root / "site", tokens


def watch(page):
    """Console errors, uncaught exceptions and every URL the page requests."""
    seen = {"errors": [], "requests": []}
    page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
    page.on("pageerror", lambda error: seen["errors"].append(str(error)))
    page.on("request", lambda request: seen["requests"].append(request.url))
    return seen


def first_row(page):
    return int(page.locator("table.latents tbody tr").first.get_attribute("data-latent"))


@pytest.mark.slow  # headless Chromium
def test_the_site_in_a_browser_from_the_file_system(browser, planted_site, tmp_path):
    site, tokens = planted_site
    index = read_data_script(site / "data" / "sae-0" / "index.js")
    page = browser.new_page()
    seen = watch(page)
    page.goto((site / "index.html").as_uri())
    page.wait_for_selector("body[data-ready=index]")
    assert page.locator("table.latents tbody tr").count() == 5
    assert first_row(page) == 0
    assert page.locator("svg.chart rect.bar").count() > 0, "the density histogram is drawn"
    page.click("th[data-key=density] button")
    assert first_row(page) == int(np.argmax(index["density"])) == 3, "densest first"
    page.click("th[data-key=density] button")
    assert first_row(page) == 4, "ascending: the dead latent first"
    page.fill("#filter", "3")
    assert [first_row(page)] == [3] and page.locator("table.latents tbody tr").count() == 1
    page.fill("#filter", "")

    page.click("table.latents tbody tr[data-latent='1']")
    page.wait_for_selector("body[data-ready=latent]")
    contexts = page.locator("#top-contexts .context")
    assert contexts.count() == min(6, index["count"][1])
    centres = page.locator("#top-contexts .tok.centre")
    assert centres.count() == contexts.count()
    vocab = read_data_script(site / "data" / "vocab.js")
    for i in range(centres.count()):
        centre = centres.nth(i)
        assert centre.text_content() == vocab[str(tokens[1])].replace("\n", "↵")
        assert "rgba(" in centre.evaluate("e => e.style.background"), "shaded by activation"
        title = centre.get_attribute("title")
        assert "activation" in title and centre.get_attribute("data-value") in title
    unshaded = page.locator("#top-contexts .tok:not([data-value])").first
    assert unshaded.evaluate("e => e.style.background") == ""
    assert page.locator("#quantile-samples .context").count() > 0
    assert page.locator(".effects .up li").count() == 10
    out = Path(os.environ.get("SAEKIT_SCREENSHOTS") or tmp_path)  # a folder for the docs' images
    page.screenshot(path=str(out / "inspect-latent.png"), full_page=True)
    png = (out / "inspect-latent.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert seen["errors"] == []
    assert all(url.startswith("file://") for url in seen["requests"]), "nothing from the network"
    page.close()


@pytest.mark.slow  # headless Chromium
def test_data_files_round_trip_through_the_browser(browser, tmp_path):
    """What a data file holds, as Chromium reads it and as read_data_script reads it."""
    from saekit.dashboard.site import data_script

    value = {"tokens": ["it's", "\\", '"q"', "\n", "\u2028", "é", "</script>"], "x": [0.5, None]}
    (tmp_path / "data.js").write_text(data_script("data", value))
    (tmp_path / "page.html").write_text(
        "<script>function saekitData(name, value) { window.got = [name, value]; }</script>"
        '<script src="data.js"></script>'
    )
    page = browser.new_page()
    page.goto((tmp_path / "page.html").as_uri())
    assert page.evaluate("() => window.got") == ["data", value]
    assert read_data_script(tmp_path / "data.js") == value
    page.close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow  # headless Chromium and an HTTP server
def test_the_site_over_http_opens_a_latent_from_its_address(browser, planted_site):
    site, _ = planted_site
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        page = browser.new_page()
        seen = watch(page)
        page.goto(f"{origin}/index.html#sae=0&latent=2")
        page.wait_for_selector("body[data-ready=latent]")
        assert page.locator("#top-contexts .tok.centre").count() == 6
        page.goto(f"{origin}/index.html#sae=0&latent=99")
        page.wait_for_selector("body[data-ready=latent]")
        assert "was not inspected" in page.locator("#app").text_content()
        page.close()
    finally:
        server.shutdown()
        server.server_close()
    assert all(url.startswith(origin) for url in seen["requests"]), "nothing from elsewhere"
    assert seen["errors"] == []


def test_decile_bands_of_a_sample():
    from saekit.dashboard.pages import _bands

    def sample(n):
        return [{"row": 100 + i, "value": float((7 * i) % n)} for i in range(n)]

    bands = _bands(sample(30))
    assert [b["decile"] for b in bands] == list(range(10, 0, -1))
    assert all(len(b["contexts"]) == 3 for b in bands)
    assert [b["low"] for b in bands] == [27.0, 24.0, 21.0, 18.0, 15.0, 12.0, 9.0, 6.0, 3.0, 0.0]
    assert bands[0]["contexts"][0]["value"] == 29.0, "strongest first"
    assert [b["decile"] for b in _bands(sample(3))] == [7, 4, 1], "ranks 2, 1, 0 of 3"
    assert _bands([]) == []

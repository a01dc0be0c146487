"""`sae inspect` cost: the streaming pass against one `sae eval` offline pass over the same rows,
the other stages, the site's size and the index's time to first paint in Chromium.

Run (GPT-2-small shape; minutes on a CPU):
    .venv/bin/python benchmarks/bench_inspect.py
Reduced, to check that it works:
    .venv/bin/python benchmarks/bench_inspect.py --d 128 --latents 2048 --rows 8192

Every figure comes from one run on one machine, printed side by side:
- rows/s of the streaming pass (`dashboard.scan`: encode, firings, every accumulator) and of
  eval's offline metrics (`evaluate.offline.offline_metrics`: encode, decode, reconstruction
  sums) on the same held-out rows, for one TopK SAE and for three SAEs sharing the pass (TopK,
  g-SAE in grad mode, BatchTopK with a threshold), each SAE in the mode inspect uses;
- the time of every stage of a full `sae inspect` of the one-SAE case (contexts, logit effects,
  writing the site), the site's size and file count, the accumulators' memory;
- in the OS's headless Chromium: time to first contentful paint and to the rendered table of the
  index, and to open one latent (skipped, with the reason, where no Chromium is installed).

The store is synthetic (GPT-2-like statistics, `saekit.cache_format.synthetic`); the SAEs have
random weights (their cost does not depend on the weights); the LM for the tokenizer and the
unembedding is a one-layer GPT-2 of width --d with GPT-2's vocabulary (the real GPT-2 tokenizer from
../shared/data when present).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import zarr

from saekit.base.devices import resolve_device
from saekit.cache_format import ActivationStore, HookSpec
from saekit.cache_format.nonfinite import NonFinitePolicy
from saekit.cache_format.synthetic import SYNTHETIC_VOCAB, synthetic_spec, write_synthetic_store
from saekit.dashboard import InspectRequest, prepare_dashboard
from saekit.dashboard.accumulators import N_BINS
from saekit.dashboard.scan import DECILES, ScanSettings, scan
from saekit.dashboard.subjects import load_subjects
from saekit.evaluate.heldout import training_mean
from saekit.evaluate.offline import offline_metrics
from saekit.train.export import save_sae
from saekit.train.sae_config import SAEConfig
from saekit.train.spec import parse_spec

HOOK = "blocks.7.hook_resid_post"
REPO = Path(__file__).resolve().parent.parent
SHARED = next(
    (p for p in (REPO.parent / "shared" / "data", REPO.parent.parent / "shared" / "data")
     if (p / "gpt2-tokenizer").is_dir()),
    None,
)  # fmt: skip


def build_lm(directory: Path, d: int) -> int:
    """A one-layer GPT-2 of width d (random weights) with GPT-2's tokenizer when available;
    the size of the tokenizer's vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast
    from transformers.utils import logging

    logging.disable_progress_bar()
    if SHARED is not None:
        tokenizer = GPT2TokenizerFast(  # (vocab_file=/merges_file= gave a 1-token tokenizer)
            vocab=str(SHARED / "gpt2-tokenizer" / "vocab.json"),
            merges=str(SHARED / "gpt2-tokenizer" / "merges.txt"),
        )
    else:
        from saekit.demo import build_tiny_lm, generate_documents

        tokenizer = GPT2TokenizerFast.from_pretrained(
            build_tiny_lm(directory / "tokenizer", generate_documents(200), vocab_size=2000)
        )
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=d, n_head=max(1, d // 64), vocab_size=SYNTHETIC_VOCAB)
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return len(tokenizer)


def save_random_sae(run: Path, text: str, d: int, store: Path, sample_x: torch.Tensor) -> None:
    """A randomly initialised SAE saved like `sae train` saves one; a BatchTopK gets the
    threshold that keeps k latents per row on average on `sample_x`."""
    spec = parse_spec(text).resolve(d)
    sae = spec.build(d)
    sae.init_weights_(torch.Generator().manual_seed(0), 1.0, sample_x.mean(0))
    options = sae.activation.options
    if spec.variant == "batchtopk":
        with torch.no_grad():
            z = sae.pre_activations(sample_x).flatten()
            threshold = z.kthvalue(len(z) - options.k * len(sample_x)).values
            sae.activation.threshold.value.fill_(float(threshold))
    cfg = SAEConfig(
        name=spec.name, variant=spec.variant, hook=HOOK, d_in=d, d_sae=sae.d_sae,
        k=getattr(options, "k", None), options=dict(vars(options)), calibration={},
        input_scale=1.0, store={"location": str(store), "identity": {}}, training={},
    )  # fmt: skip
    save_sae(sae, run / "saes" / spec.name, cfg)


class StageTimes:
    """A progress sink that records how long each stage took."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def stage(self, description: str, total: int | None) -> None:
        self.close()
        self._current = (description, time.perf_counter())

    def advance(self, n: int) -> None:
        pass

    def close(self) -> None:
        if self._current is not None:
            name, began = self._current
            self.seconds[name] = time.perf_counter() - began
            self._current = None


def synchronised(device: torch.device, result: object) -> object:
    """`result`, once the device has finished its queued work (timings include it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result


def timed(function) -> tuple[object, float]:
    began = time.perf_counter()
    result = function()
    return result, time.perf_counter() - began


def passes(
    store: ActivationStore, runs: list[Path], rows: int, batch: int, device: torch.device
) -> tuple[float, float]:
    """Seconds of (inspect's streaming pass, eval's offline pass) over the same rows."""
    subjects = load_subjects([str(r) for r in runs], store, "all", device)
    settings = ScanSettings(max_rows=rows, batch_rows=batch)
    _, inspect_seconds = timed(
        lambda: synchronised(device, scan(store, subjects, settings, device))
    )
    targets = [s.target for s in subjects]
    policy = NonFinitePolicy()
    means = {HOOK: training_mean(store, HOOK, policy).to(device)}
    _, eval_seconds = timed(
        lambda: synchronised(device, offline_metrics(store, targets, means, rows, device, policy))
    )
    return inspect_seconds, eval_seconds


def site_size(site: Path) -> tuple[int, int]:
    files = [p for p in site.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def browser_times(site: Path, latent: int) -> dict[str, float] | str:
    """First paint and table render of the index, and opening one latent, in ms (best of 3)."""
    from saekit.dashboard.browser import missing_browser_reason, open_browser

    reason = missing_browser_reason()
    if reason:
        return reason
    best: dict[str, float] = {}
    with open_browser() as context:
        for _ in range(3):
            page = context.new_page()
            page.goto((site / "index.html").as_uri())
            page.wait_for_selector("body[data-ready=index]")
            paint = page.evaluate(
                "() => performance.getEntriesByName('first-contentful-paint')[0].startTime"
            )
            table = page.evaluate(
                "() => performance.getEntriesByName('saekit-index-rendered')[0].startTime"
            )
            began = time.perf_counter()
            page.evaluate(f"() => {{ location.hash = 'sae=0&latent={latent}'; }}")
            page.wait_for_selector("body[data-ready=latent]")
            opened = 1000 * (time.perf_counter() - began)
            for key, value in (("first paint", paint), ("index table", table),
                               ("open a latent", opened)):  # fmt: skip
                best[key] = min(best.get(key, value), value)
            page.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--latents", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--rows", type=int, default=32768, help="held-out rows read per pass")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    torch.manual_seed(0)
    root = Path(tempfile.mkdtemp(prefix="bench-inspect-", dir=args.dir))
    try:
        run_benchmark(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_benchmark(root: Path, args: argparse.Namespace) -> None:
    d, latents, k, rows = args.d, args.latents, args.k, args.rows
    device = resolve_device(args.device)
    context = 128
    holdout = -(-(rows + rows // context + 1) // context) * context  # whole contexts, pos 0 out
    spec = synthetic_spec(
        2 * holdout, hooks={HOOK: HookSpec(d=d)}, context_size=context, rows_per_chunk=8192,
        chunks_per_block=4, holdout_rows=holdout,
    )  # fmt: skip
    spec.identity["model"] = str(root / "lm")
    store_path = root / "store.zarr"
    print(f"writing a synthetic store: {2 * holdout:,} rows ({holdout:,} held out), d = {d}")
    write_synthetic_store(store_path, spec)
    vocabulary = build_lm(root / "lm", d)
    if vocabulary < SYNTHETIC_VOCAB:  # the fallback tokenizer: inspect refuses ids it lacks
        tokens = zarr.open_group(store_path, mode="r+")["tokens"]
        tokens[:] = tokens[:] % vocabulary
    store = ActivationStore.open(store_path)
    sample = store.read_tensors(["activations"], holdout, holdout + 4096, HOOK)["activations"]
    specs = {
        "topk": f"topk:k={k},latents={latents}",
        "gsae": f"gsae:k={k},latents={latents},beta=1000",
        "batchtopk": f"batchtopk:k={k},latents={latents}",
    }
    runs = {}
    for name, text in specs.items():
        runs[name] = root / f"run-{name}"
        save_random_sae(runs[name], text, d, store_path, sample)
    load = os.getloadavg()
    print(f"device: {device}")
    print(f"load average before timing: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"on {os.cpu_count()} CPUs")  # fmt: skip

    print(f"\nstreaming pass vs eval offline pass, {rows:,} held-out rows, F = {latents:,}, "
          f"k = {k}, batches of {args.batch_size}")  # fmt: skip
    print(f"{'SAEs':<34}{'inspect rows/s':>16}{'eval rows/s':>14}{'inspect / eval time':>22}")
    for label, chosen in (("1 (topk)", ["topk"]), ("3 (topk, gsae grad, batchtopk)", list(specs))):
        inspect_s, eval_s = passes(store, [runs[n] for n in chosen], rows, args.batch_size, device)
        print(f"{label:<34}{rows / inspect_s:>16,.0f}{rows / eval_s:>14,.0f}"
              f"{inspect_s / eval_s:>22.2f}")  # fmt: skip

    print("\nfull `sae inspect` of the one-SAE case (every latent)")
    site = root / "site"
    times = StageTimes()
    request = InspectRequest(saes=(str(runs["topk"]),), out=str(site), tokens=rows,
                             batch_size=args.batch_size, device=args.device)  # fmt: skip
    dashboard, prepare_seconds = timed(lambda: prepare_dashboard(request))
    dashboard.build(times)
    times.close()
    print(f"  {'loading (SAE, tokenizer, ln_f + unembedding)':<46}{prepare_seconds:>8.1f} s")
    for stage, seconds in times.seconds.items():
        print(f"  {stage:<46}{seconds:>8.1f} s")
    total = prepare_seconds + sum(times.seconds.values())
    print(f"  {'total':<46}{total:>8.1f} s")
    size, files = site_size(site)
    index_size = (site / "data" / "sae-0" / "index.js").stat().st_size
    print(f"  site: {size / 1e6:,.1f} MB in {files:,} files ({size / latents / 1e3:.1f} kB per "
          f"latent); the index's data: {index_size / 1e6:.2f} MB")  # fmt: skip
    kept = latents * (request.top + DECILES * request.per_band) * (8 + 8 + 4)  # key, row, value
    histograms = latents * N_BINS * 8
    moments = latents * (8 + 8 + 4)
    print(
        f"  accumulator memory per SAE: {(kept + histograms + moments) / 1e6:.0f} MB "
        "(independent of the number of rows)"
    )

    print("\nthe index in headless Chromium (best of 3 loads, from file://)")
    result = browser_times(site, latent=latents // 2)
    if isinstance(result, str):
        print(f"  skipped: {result}")
    else:
        for key, value in result.items():
            print(f"  {key:<20}{value:>8.0f} ms")


if __name__ == "__main__":
    main()

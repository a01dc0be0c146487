"""Harvest speed and store size against the number of hooks, the storage dtype and where
gradients are kept: what a transcoder's or a cross-layer transcoder's store costs.

Run:  .venv/bin/python benchmarks/bench_hooks.py [--tokens 2048] [--rounds 9] [--harvest-rounds 3]
                                                [--batch-size 4] [--device auto]

Model: a random-init GPT-2 small (`GPT2Config()`, 124M parameters, 12 layers, d = 768) with the
real GPT-2 tokenizer from ../shared/data/gpt2-tokenizer, saved with save_pretrained and loaded
through saekit's own path, as `sae harvest` does. Text: ../shared/data/text/*.txt. Skips with a
message when ../shared/data is absent.

Hook sets (all given as patterns, as a user would):
- 1 hook:   blocks.6.hook_resid_post (an SAE);
- 4 hooks:  blocks.5-6.mlp.hook_in and blocks.5-6.hook_mlp_out (two transcoders' inputs and
            targets), targets blocks.5-6.hook_mlp_out;
- 24 hooks: blocks.*.hook_resid_mid and blocks.*.hook_mlp_out (a CLT over all 12 layers),
            targets blocks.*.hook_mlp_out.
Each set in float16 and float8, with gradients at every hook, at none (`--no-gradients`) and at
the targets only (`--gradients TARGETS`): 16 harvests. Printed side by side from one run, with
ratios to the first line:

- step: tokens/s of the harvest's per-batch work (`run_batch` with the harvest's gradient
  choice, then encoding the rows to the store's dtypes and flagging bad rows), on the same
  pre-tokenised batch; the 16 settings take turns batch by batch, in a rotating order, for
  `--rounds` rounds, and each one's best round counts (as timeit's minimum: on a shared machine
  other jobs only ever slow a step down, by up to 5x from one second to the next, so the best
  of a few is the undisturbed rate). This is the figure to compare settings by.
- harvest: tokens/s of the whole `sae harvest` pipeline into a new store of `--tokens` tokens
  (no held-out part), in blocks of one batch so that the writer commits a block while the LM
  computes the next, as in a long run; timed from the moment the store's arrays exist (creating
  them is a fixed cost, ~0.1 s per array) to the end of `run_harvest`, model loading left out.
  The settings take turns for `--harvest-rounds` rounds, best round counts; each harvest lasts
  seconds to a minute, so on a busy machine this figure is the noisier one.
- bytes/row, measured from each store: its chunk objects (the data; the metadata is a few kB per
  array whatever the store's size) divided by its rows, chunks of one batch so that no chunk is
  padded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bench_harvest import SHARED, build_gpt2_small
from common import synchronize
from saekit.base.devices import resolve_device
from saekit.cache_format import ActivationStore, HookSpec, RowBlock, StoreLayout, StoreSpec
from saekit.cache_format.writer import encode_rows, row_problems
from saekit.harvest import HarvestConfig, plan_harvest, run_harvest
from saekit.harvest.contexts import Packing, context_stream
from saekit.harvest.hooks import resolve
from saekit.harvest.sources import resolve_source
from saekit.lm import LanguageModel, load_model, run_batch

HOOK_SETS = {
    "1 hook": (("blocks.6.hook_resid_post",), None),
    "4 hooks": (
        ("blocks.5-6.mlp.hook_in", "blocks.5-6.hook_mlp_out"),
        ("blocks.5-6.hook_mlp_out",),
    ),
    "24 hooks": (
        ("blocks.*.hook_resid_mid", "blocks.*.hook_mlp_out"),
        ("blocks.*.hook_mlp_out",),
    ),
}
DTYPES = ("float16", "float8")


def settings() -> list[dict]:
    """The 16 harvests: hook set x dtype x where gradients are kept."""
    out = []
    for label, (hooks, targets) in HOOK_SETS.items():
        choices = {"every hook": True, "none": False}
        if targets:
            choices["targets"] = targets
        for dtype in DTYPES:
            for where, gradients in choices.items():
                out.append(
                    {"hooks": label, "patterns": hooks, "dtype": dtype, "where": where,
                     "gradients": gradients}
                )  # fmt: skip
    return out


def step_spec(model: LanguageModel, setting: dict) -> StoreSpec:
    """The store spec a harvest of this setting makes (hooks resolved as the harvest does)."""
    names = resolve(setting["patterns"], model.hook_names, option="--hook", among="the hooks")
    gradients = setting["gradients"]
    if isinstance(gradients, bool):
        kept = set(names) if gradients else set()
    else:
        kept = set(resolve(gradients, names, option="--gradients", among="the hooks"))
    widths = model.hook_widths(names)
    hooks = {h: HookSpec(d=widths[h], gradients=h in kept) for h in names}
    return StoreSpec(StoreLayout(), hooks, activation_dtype=setting["dtype"])


def step(model: LanguageModel, spec: StoreSpec, tokens_BT: torch.Tensor) -> None:
    """The harvest's per-batch work: forward (and backward), rows encoded and checked."""
    hooks = list(spec.hooks)
    out = run_batch(
        model.bridge, tokens_BT, hooks, gradients=[h for h in hooks if spec.hooks[h].gradients]
    )
    b, t = tokens_BT.shape
    rows = RowBlock(
        tokens=tokens_BT.flatten(),
        sequence=torch.arange(b).repeat_interleave(t),
        position=torch.arange(t).repeat(b),
        loss=out.loss.flatten(),
        activations={h: x.flatten(0, 1) for h, x in out.activations.items()},
        gradients={h: g.flatten(0, 1) for h, g in out.gradients.items()},
    )
    encode_rows(rows, spec, check=False)
    row_problems(rows, spec)


def step_rates(model, tokens_BT, specs, rounds) -> list[float]:
    """Best tokens/s of each spec's step over the rounds; the specs take turns, in a rotating
    order."""
    step(model, specs[0], tokens_BT)  # warm-up
    rates: list[list[float]] = [[] for _ in specs]
    for round_ in range(rounds):
        order = [(round_ + i) % len(specs) for i in range(len(specs))]
        for index in order:
            synchronize(model.device)
            started = time.perf_counter()
            step(model, specs[index], tokens_BT)
            synchronize(model.device)
            rates[index].append(tokens_BT.numel() / (time.perf_counter() - started))
        print(f"step round {round_ + 1} of {rounds} done", flush=True)
    return [max(r) for r in rates]


def data_bytes(store: Path) -> int:
    """Bytes of the store's chunk objects (every array's `c/...` files)."""
    return sum(p.stat().st_size for p in store.rglob("*") if p.is_file() and "c" in p.parts)


class Clock:
    """A harvest progress that notes when the store's arrays exist and rows start to come."""

    def __init__(self, device) -> None:
        self.device, self.started = device, None

    def start(self, total_rows, done_rows) -> None:
        synchronize(self.device)
        self.started = time.perf_counter()

    def advance(self, rows) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--harvest-rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--context-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if not (SHARED / "gpt2-tokenizer" / "vocab.json").exists():
        print(f"skipped: {SHARED} (GPT-2 tokenizer and texts) is not present")
        return
    batch_rows = args.batch_size * args.context_size
    work = Path(tempfile.mkdtemp(prefix="saekit-bench-hooks-"))
    model_dir = work / "gpt2-small"
    runs = settings()
    load_at_start = os.getloadavg()[0]
    try:
        build_gpt2_small(model_dir)
        model = load_model(str(model_dir), resolve_device(args.device))
        contexts = context_stream(
            resolve_source(str(SHARED / "text")).documents(),
            model.tokenizer,
            Packing.for_tokenizer(model.tokenizer, args.context_size),
            holdout=0,
        )
        tokens_BT = torch.stack([torch.from_numpy(next(contexts)) for _ in range(args.batch_size)])
        specs = [step_spec(model, setting) for setting in runs]
        steps = step_rates(model, tokens_BT.to(model.device), specs, args.rounds)
        del model

        for setting, rate in zip(runs, steps, strict=True):
            setting["step"], setting["harvests"] = rate, []
        for round_ in range(args.harvest_rounds):
            for index in [(round_ + i) % len(runs) for i in range(len(runs))]:
                setting = runs[index]
                out = work / "store.zarr"
                shutil.rmtree(out, ignore_errors=True)
                plan = plan_harvest(
                    HarvestConfig(
                        model=str(model_dir),
                        dataset=str(SHARED / "text"),
                        hooks=setting["patterns"],
                        out=str(out),
                        tokens=args.tokens,
                        holdout_tokens=0,
                        context_size=args.context_size,
                        batch_size=args.batch_size,
                        dtype=setting["dtype"],
                        gradients=setting["gradients"],
                        device=args.device,
                        rows_per_chunk=batch_rows,
                        chunks_per_block=1,
                    )
                )
                clock = Clock(plan.model.device)
                result = run_harvest(plan, clock)
                synchronize(plan.model.device)
                setting["harvests"].append(result.rows / (time.perf_counter() - clock.started))
                store = ActivationStore.open(out)
                setting["kept"] = sum(store.has_gradients(h) for h in store.hooks)
                setting["bytes_per_row"] = data_bytes(out) / store.n_rows_committed
                del plan, store
            print(f"harvest round {round_ + 1} of {args.harvest_rounds} done", flush=True)
        for setting in runs:
            setting["harvest"] = max(setting["harvests"])
        print()
        print(
            f"device {args.device}, GPT-2 small shape (random init), batches of "
            f"{args.batch_size} x {args.context_size} tokens; step: best of {args.rounds} "
            f"rounds; harvest: {args.tokens} tokens per store, best of {args.harvest_rounds}; "
            f"load average {load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
        )
        print(f"{'hooks':>9} {'dtype':>8} {'gradients at':>16} {'step tok/s':>11} {'ratio':>6} "
              f"{'harvest tok/s':>14} {'ratio':>6} {'bytes/row':>10} {'ratio':>6} "
              f"{'GB / 1M tokens':>15}")  # fmt: skip
        for setting in runs:
            print_row(setting, runs[0])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_row(row: dict, first: dict, flush: bool = False) -> None:
    where = f"{row['where']} ({row['kept']})"
    print(
        f"{row['hooks']:>9} {row['dtype']:>8} {where:>16} "
        f"{row['step']:11.0f} {row['step'] / first['step']:6.2f} "
        f"{row['harvest']:14.0f} {row['harvest'] / first['harvest']:6.2f} "
        f"{row['bytes_per_row']:10,.0f} {row['bytes_per_row'] / first['bytes_per_row']:6.2f} "
        f"{row['bytes_per_row'] * 1e6 / 1e9:15.2f}",
        flush=flush,
    )


if __name__ == "__main__":
    main()

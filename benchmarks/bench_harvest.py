"""Harvest throughput against the bare forward+backward of the same model and batch.

Run:  .venv/bin/python benchmarks/bench_harvest.py [--batches 6] [--batch-size 8] [--device auto]

Model: a random-init GPT-2-small (`GPT2Config()`, 124M parameters) with the real GPT-2 tokenizer
from ../shared/data/gpt2-tokenizer, saved with save_pretrained and loaded through saekit's own
path (TransformerBridge.boot_transformers). Text: ../shared/data/text/*.txt. Skips with a message
when ../shared/data is absent.

Printed side by side from one run, in tokens/s:
- bare:    the LM computation alone: forward with the hook captured as the graph's leaf, summed
           next-token CE, backward to the hook activation (saekit's `run_batch`), on batches
           tokenised in advance;
- hf:      the same forward+backward on the plain Hugging Face model (no TransformerLens), for
           the cost of the bridge;
- harvest: the whole `sae harvest` pipeline (reading and tokenising text, the LM, encoding,
           writing and committing the store), model loading excluded.
The target is harvest / bare >= 0.9. Bytes per token on disk are reported too.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import synchronize
from saekit.harvest import HarvestConfig, plan_harvest, run_harvest
from saekit.harvest.contexts import Packing, context_stream
from saekit.harvest.sources import resolve_source
from saekit.lm import run_batch

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
HOOK = "blocks.7.hook_resid_post"


def build_gpt2_small(directory: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast
    from transformers.utils import logging

    logging.disable_progress_bar()
    tokenizer = GPT2TokenizerFast(  # (vocab_file=/merges_file= gave a 1-token tokenizer)
        vocab=str(SHARED / "gpt2-tokenizer" / "vocab.json"),
        merges=str(SHARED / "gpt2-tokenizer" / "merges.txt"),
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def rate(tokens: int, seconds: float) -> float:
    return tokens / seconds


def bare_rate(bridge, batches: list[torch.Tensor], hook: str = HOOK) -> float:
    """Tokens/s of saekit's forward + backward alone (`run_batch`) on pre-tokenised batches."""
    run_batch(bridge, batches[0], [hook])  # warm-up
    synchronize(batches[0].device)
    started = time.perf_counter()
    for tokens in batches:
        run_batch(bridge, tokens, [hook])
    synchronize(batches[0].device)
    return rate(sum(t.numel() for t in batches), time.perf_counter() - started)


def hf_rate(model_dir: Path, batches: list[torch.Tensor], device: torch.device) -> float:
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(model_dir).to(device).eval().requires_grad_(False)
    captured = {}

    def make_leaf(module, args, output):
        leaf = output.detach().requires_grad_(True)
        captured["x"] = leaf
        return leaf

    model.transformer.h[7].register_forward_hook(make_leaf)

    def step(tokens: torch.Tensor) -> None:
        logits = model(tokens).logits
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum")
        torch.autograd.grad(ce, [captured["x"]])

    step(batches[0])
    synchronize(device)
    started = time.perf_counter()
    for tokens in batches:
        step(tokens)
    synchronize(device)
    return rate(sum(t.numel() for t in batches), time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--context-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if not (SHARED / "gpt2-tokenizer" / "vocab.json").exists():
        print(f"skipped: {SHARED} (GPT-2 tokenizer and texts) is not present")
        return
    work = Path(tempfile.mkdtemp(prefix="saekit-bench-harvest-"))
    try:
        build_gpt2_small(work / "gpt2-small")
        tokens = args.batches * args.batch_size * args.context_size
        config = HarvestConfig(
            model=str(work / "gpt2-small"),
            dataset=str(SHARED / "text"),
            hooks=(HOOK,),
            out=str(work / "store.zarr"),
            tokens=tokens + args.batch_size * args.context_size,  # + one held-out batch
            holdout_tokens=args.batch_size * args.context_size,
            context_size=args.context_size,
            batch_size=args.batch_size,
            device=args.device,
            rows_per_chunk=args.batch_size * args.context_size,  # no padded edge chunk
            chunks_per_block=4,
        )
        plan = plan_harvest(config)
        bridge, device = plan.model.bridge, plan.model.device
        contexts = context_stream(
            resolve_source(config.dataset).documents(),
            plan.model.tokenizer,
            Packing.for_tokenizer(plan.model.tokenizer, args.context_size),
            holdout=0,
        )
        batches = [
            torch.stack([torch.from_numpy(next(contexts)) for _ in range(args.batch_size)]).to(
                device
            )
            for _ in range(args.batches)
        ]
        bare = bare_rate(bridge, batches)
        hf = hf_rate(work / "gpt2-small", batches, device)
        synchronize(device)
        started = time.perf_counter()
        result = run_harvest(plan)  # returns once every block is committed (the copies landed)
        synchronize(device)
        harvest = rate(result.rows, time.perf_counter() - started)
        size = sum(p.stat().st_size for p in (work / "store.zarr").rglob("*") if p.is_file())
        print(
            f"device {device}, GPT-2 small (random init), batch {args.batch_size} x "
            f"{args.context_size} tokens, {args.batches} batches, hook {HOOK}"
        )
        print(f"bare forward+backward (bridge)  {bare:10,.0f} tokens/s")
        print(
            f"plain HF forward+backward       {hf:10,.0f} tokens/s   (bridge / HF {bare / hf:.2f})"
        )
        print(f"sae harvest (whole pipeline)    {harvest:10,.0f} tokens/s")
        print(f"ratio harvest / bare            {harvest / bare:10.2f}   (target >= 0.9)")
        print(f"bytes on disk per token         {size / result.rows:10,.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Build the research LM of docs/recipes.md: a 4-layer GPT-2-architecture model (d = 192, 6 heads,
context 128) with the real GPT-2 tokenizer, trained on the public text in ../shared/data/text.

    .venv/bin/python experiments/research_lm.py --out experiments/output/research-lm --steps 1500

The model is saved with `save_pretrained` (weights and tokenizer), so saekit loads it like any
Hugging Face model (`sae recipe ... --model experiments/output/research-lm`). It is never
committed. The last 5 % of the tokens are held out; the validation cross-entropy is printed and
written to `training.json` next to the weights. Skips with a message when the data is absent.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data from the project root (a worktree under wt/ has it one level further up)
DATA_CANDIDATES = (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data")
TEXTS = ("wikitext-2-valid.txt", "wikitext-2-test.txt", "tinyshakespeare.txt")
CONTEXT = 128
VALIDATION_FRACTION = 0.05


def find_data() -> Path | None:
    found = [p for p in DATA_CANDIDATES if (p / "gpt2-tokenizer" / "vocab.json").exists()]
    return found[0] if found else None


def load_tokens(tokenizer, data: Path) -> torch.Tensor:
    """Every text, tokenised and joined with the end-of-text token."""
    ids: list[int] = []
    for name in TEXTS:
        text = (data / "text" / name).read_text()
        ids += tokenizer(text, verbose=False)["input_ids"] + [tokenizer.eos_token_id]
    return torch.tensor(ids)


def windows(stream: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(stream) - CONTEXT, (n,), generator=generator)
    return torch.stack([stream[s : s + CONTEXT] for s in starts.tolist()])


@torch.no_grad()
def validation_loss(model, stream: torch.Tensor, batch: int = 32) -> float:
    model.eval()
    chunks = stream[: len(stream) // CONTEXT * CONTEXT].view(-1, CONTEXT)
    total, count = 0.0, 0
    for first in range(0, len(chunks), batch):
        x = chunks[first : first + batch]
        total += float(model(x, labels=x).loss) * len(x)
        count += len(x)
    model.train()
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=16, help="contexts per step")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    data = find_data()
    if data is None:
        print(f"skipped: shared/data is absent (looked in {', '.join(map(str, DATA_CANDIDATES))})")
        sys.exit(0)
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    torch.set_num_threads(args.threads)
    tokenizer = GPT2TokenizerFast(
        vocab=str(data / "gpt2-tokenizer" / "vocab.json"),
        merges=str(data / "gpt2-tokenizer" / "merges.txt"),
    )
    tokenizer.model_max_length = CONTEXT
    tokens = load_tokens(tokenizer, data)
    split = int(len(tokens) * (1 - VALIDATION_FRACTION))
    train, valid = tokens[:split], tokens[split:]
    print(f"{len(tokens):,} tokens: {len(train):,} training, {len(valid):,} validation")
    torch.manual_seed(args.seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=4,
        n_embd=192,
        n_head=6,
        n_positions=CONTEXT,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps)))
        ),
    )
    generator = torch.Generator().manual_seed(args.seed)
    model.train()
    start = time.perf_counter()
    for step in range(args.steps):
        batch = windows(train, args.batch, generator)
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == args.steps - 1:
            rate = (step + 1) * args.batch * CONTEXT / (time.perf_counter() - start)
            print(f"step {step:5d}  loss {float(loss):.3f}  {rate:,.0f} tok/s", flush=True)
    val = validation_loss(model, valid)
    print(f"validation CE {val:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    record = {
        "validation_ce": val,
        "steps": args.steps,
        "batch": args.batch,
        "context": CONTEXT,
        "lr": args.lr,
        "seed": args.seed,
        "train_tokens": len(train),
        "seconds": time.perf_counter() - start,
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()

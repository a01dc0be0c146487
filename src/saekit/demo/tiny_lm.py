"""Build a tiny GPT-2-architecture LM and its tokenizer locally, without any download.

The tokenizer is a byte-level BPE trained by `tokenizers` on the given texts; the model is a
`GPT2LMHeadModel` with a small `GPT2Config`, optionally trained for a few steps so its loss (and
its gradients) mean something. Both are saved with `save_pretrained`, so saekit loads them through
the same `TransformerBridge.boot_transformers(path)` as any Hugging Face model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

END_OF_TEXT = "<|endoftext|>"


def build_tiny_lm(
    out_dir: Path,
    texts: Iterable[str],
    *,
    vocab_size: int = 512,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_positions: int = 128,
    train_steps: int = 0,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on `texts`, build (and optionally train) a GPT-2, save to `out_dir`."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    texts = list(texts)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts,
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[END_OF_TEXT],
        show_progress=False,
    )
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
    )
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_positions=n_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    if train_steps:
        _train(model, tokenizer, texts, train_steps, n_positions, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def _train(model, tokenizer, texts: list[str], steps: int, n_positions: int, seed: int) -> None:
    """A few Adam steps of next-token prediction on random windows of the joined texts."""
    ids = tokenizer(f" {END_OF_TEXT} ".join(texts), verbose=False)["input_ids"]
    stream = torch.tensor(ids)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - n_positions, (16,), generator=generator)
        batch = torch.stack([stream[s : s + n_positions] for s in starts.tolist()])
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()

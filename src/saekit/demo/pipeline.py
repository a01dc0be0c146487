"""The offline demo's steps: corpus and tiny LM, then harvest (train and eval follow)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saekit.demo.corpus import generate_documents, write_corpus
from saekit.demo.tiny_lm import build_tiny_lm
from saekit.harvest import HarvestConfig

DEMO_HOOK = "blocks.0.hook_resid_post"


@dataclass(frozen=True)
class DemoPaths:
    root: Path

    @property
    def corpus(self) -> Path:
        return self.root / "corpus" / "documents.txt"

    @property
    def model(self) -> Path:
        return self.root / "tiny-gpt2"

    @property
    def store(self) -> Path:
        return self.root / "store.zarr"


def prepare_model_and_corpus(paths: DemoPaths) -> None:
    """Write the generated corpus and build a tiny GPT-2 trained briefly on it (once)."""
    if not paths.corpus.exists():
        write_corpus(paths.corpus, n_documents=3000, seed=0)
    if not (paths.model / "config.json").exists():
        build_tiny_lm(
            paths.model,
            generate_documents(3000, seed=0),
            vocab_size=512,
            n_layer=2,
            n_embd=64,
            n_head=4,
            n_positions=128,
            train_steps=150,
        )


def harvest_config(paths: DemoPaths) -> HarvestConfig:
    """60k tokens of activations and gradients at one hook, 4096 of them held out."""
    return HarvestConfig(
        model=str(paths.model),
        dataset=str(paths.corpus),
        hooks=(DEMO_HOOK,),
        out=str(paths.store),
        tokens=61_440,
        holdout_tokens=4096,
        context_size=64,
        batch_size=32,
        device="cpu",
        rows_per_chunk=4096,
        chunks_per_block=4,
        provenance={"command": "sae demo"},
    )

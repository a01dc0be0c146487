"""The offline demo's steps: corpus and tiny LM, harvest, train several SAE variants, evaluate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saekit.base.outputs import (
    DEMO_DIR,
    check_output_dir,
    make_directory,
    refuse_links,
    write_marker,
)
from saekit.dashboard import InspectRequest
from saekit.demo.corpus import generate_documents, write_corpus
from saekit.demo.tiny_lm import build_tiny_lm
from saekit.evaluate import INSPECT_SITE, EvalRequest
from saekit.harvest import HarvestConfig
from saekit.train import TrainRequest, TrainSettings, parse_spec

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

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def report(self) -> Path:
        return self.root / "report"


def claim_output(paths: DemoPaths) -> None:
    """Refuse a DIR inside a store, a file, a link or a directory saekit did not write as a
    demo (an earlier saekit's demo output carries no marker: refused with what to do); create
    DIR and mark it as a demo directory."""
    check_output_dir(paths.root, [], "demo", DEMO_DIR, lambda root: (root / "store.zarr").exists())
    refuse_links(paths.root, ["corpus", paths.model.name, paths.store.name, "run", "report"])
    make_directory(paths.root, paths.root)
    write_marker(paths.root, DEMO_DIR)


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


# k = 8 for the TopK family; gated's and jumprelu's penalties land their L0 near 8 too on this data
# (jumprelu's θ starts at 1: a short run cannot move it far). relu keeps its default λ (L0 ≈ 30):
# ReLU + L1 pushed to L0 8 here (λ = 12) shrinks its codes to NMSE 0.68 (docs/variants.md, relu).
DEMO_SAES = (
    "topk:k=8,latents=256",
    "gsae:k=8,latents=256",
    "batchtopk:k=8,latents=256",
    "feature-choice:k=8,latents=256",
    "gated:latents=256",
    "relu:latents=256",
    "jumprelu:latents=256,threshold=1.0",
)


def train_request(paths: DemoPaths) -> TrainRequest:
    """Every variant on the same batches: ~3 epochs of the store's training rows."""
    return TrainRequest(
        store=str(paths.store),
        hook=DEMO_HOOK,
        out=paths.run,
        specs=[parse_spec(text) for text in DEMO_SAES],
        settings=TrainSettings(tokens=172_032, batch_size=1024, device="cpu", seed=0),
        resume=paths.run.exists(),
    )


def eval_request(paths: DemoPaths) -> EvalRequest:
    """Offline and online metrics on all 4096 held-out tokens, with steering."""
    return EvalRequest(
        runs=(str(paths.run),),
        out=str(paths.report),
        store=str(paths.store),
        device="cpu",
        batch_size=16,
        steering=True,
        steering_latents=32,
    )


def inspect_request(paths: DemoPaths) -> InspectRequest:
    """Dashboards of every latent of every SAE, from the held-out tokens, inside the report
    (which links to them)."""
    return InspectRequest(
        saes=(str(paths.run),),
        out=str(paths.report / Path(INSPECT_SITE).parent),
        store=str(paths.store),
        device="cpu",
    )

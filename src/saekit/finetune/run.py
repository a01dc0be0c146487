"""`sae finetune`: saved SAEs of a run trained on, from start to finish.

Everything a user can get wrong is checked before anything is written: the numbers, the run
and the SAEs named, shapes that cannot be fine-tuned, the store, the model (it must be the
store's, as for `sae eval`), the text, and every output name. Then the SAEs are fine-tuned
together on one stream of batches (one clean pass of the LM per batch, one spliced pass per
SAE), checkpointed, and saved as new SAEs of the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saekit.base.devices import check_device_name, resolve_device
from saekit.base.errors import SaekitError
from saekit.base.fingerprint import files_fingerprint
from saekit.base.locations import absolute_location
from saekit.base.tracking import Tracking
from saekit.cache_format import ActivationStore
from saekit.evaluate import check_provenance
from saekit.finetune.data import ContextSource, StoreContexts, TextContexts
from saekit.finetune.job import Job
from saekit.finetune.objective import LOSS, Finetuning, Terms, clean_pass
from saekit.harvest import resolve_source
from saekit.lm import LanguageModel, load_model_for_store
from saekit.train import (
    CFG_FILE,
    Dictionary,
    Member,
    Plan,
    Throughput,
    TrainingTracker,
    checkpoint_due,
    load_sae,
    recorded_store,
    saved_saes,
    saved_spec,
    track_training,
    trained_saes,
)

WEIGHTS_FILE = "sae.safetensors"
LR_FRACTION = 0.25  # default lr: this fraction of the SAE's training lr
LR_SCHEDULE = "linear decay from lr to 0 over the steps, no warm-up"
PROVENANCE_KEYS = ("weights_fingerprint", "tokenizer_fingerprint")
OTHER_MODEL = "give that model with --model (a fine-tune trains against the store's own model)"


@dataclass(frozen=True)
class FinetuneRequest:
    """Everything `sae finetune` takes."""

    run: str
    tokens: int
    saes: tuple[str, ...] = ()  # SAE names of the run (default: every SAE its training saved)
    model: str | None = None  # default: the store's model
    store: str | None = None  # default: the store the SAEs were trained on
    dataset: str | None = None  # default: the store's own training contexts
    text_column: str = "text"
    split: str = "train"
    batch_size: int = 8  # contexts per step
    lr: float | None = None  # default: LR_FRACTION of each SAE's training lr
    suffix: str | None = None  # new names are <name>-<suffix>; default kl<tokens>
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 5_000_000  # tokens between checkpoints; 0: only at the end
    log_every: int = 10  # steps between metric lines
    grad_clip: float = 1.0
    storage_options: dict[str, Any] | None = None
    tracking: Tracking = field(default_factory=Tracking)  # --wandb, --tensorboard

    def check(self) -> None:
        """Refuse numbers and names out of range."""
        for option, value in (("--tokens", self.tokens), ("--batch-size", self.batch_size)):
            if value <= 0:
                raise SaekitError(f"{option} must be positive, not {value}")
        if self.lr is not None and not self.lr > 0:
            raise SaekitError(f"--lr must be positive, not {self.lr}")
        if self.checkpoint_every < 0:
            raise SaekitError(f"--checkpoint-every must be >= 0, not {self.checkpoint_every}")
        if self.suffix is not None and (not self.suffix or "/" in self.suffix):
            raise SaekitError(f"--suffix must be a non-empty name without '/', not {self.suffix!r}")
        check_device_name(self.device)

    @property
    def name_suffix(self) -> str:
        return self.suffix or f"kl{_compact(self.tokens)}"


def _compact(tokens: int) -> str:
    """2000000 -> 2M, 500000 -> 500k, 7680 -> 7680."""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if tokens % size == 0:
            return f"{tokens // size}{unit}"
    return str(tokens)


@dataclass(frozen=True)
class FinetuneResult:
    """The fine-tuned SAEs (new name -> directory), what each was fine-tuned from, and their
    last metrics line."""

    run: Path
    saes: dict[str, Path]
    sources: dict[str, str]
    final_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    already_complete: bool = False


class Observer:
    """Progress hooks (the CLI draws a bar); every method is optional."""

    def started(self, plan: Plan, start_step: int, contexts_per_step: int) -> None: ...

    def stepped(self, step: int) -> None: ...

    def logged(self, step: int, records: list[dict[str, Any]]) -> None: ...


class Tracked(Observer):
    """An observer whose metrics lines also go to a tracked run (`--wandb`, `--tensorboard`)."""

    def __init__(self, observer: Observer, tracker: TrainingTracker) -> None:
        self.observer, self.tracker = observer, tracker

    def started(self, plan: Plan, start_step: int, contexts_per_step: int) -> None:
        self.observer.started(plan, start_step, contexts_per_step)

    def stepped(self, step: int) -> None:
        self.observer.stepped(step)

    def logged(self, step: int, records: list[dict[str, Any]]) -> None:
        self.observer.logged(step, records)
        self.tracker.logged(step, records)


def finetune(request: FinetuneRequest, observer: Observer | None = None) -> FinetuneResult:
    """Fine-tune the run's SAEs on the spliced model's KL to the clean model (plus their
    reconstruction loss), and save them as new SAEs of the run."""
    request.check()
    request.tracking.check()
    observer = observer or Observer()
    run = Path(request.run)
    sources = _selected(run, request.saes)
    device = resolve_device(request.device)
    saes = {directory: load_sae(directory, device) for directory in sources}
    for directory, sae in saes.items():
        _check_shape(sae, directory)
    store = ActivationStore.open(
        request.store or recorded_store(sources[0]), request.storage_options
    )
    for directory, sae in saes.items():
        check_provenance(sae, store, directory, overridable=False)
    context_size = _context_size(store)
    plan = _plan(request, context_size)
    hooks = sorted({hook for sae in saes.values() for hook in sae.shape.hooks})
    model = load_model_for_store(store, hooks, device, request.model, instead=OTHER_MODEL).model
    data = _data(request, store, model, context_size)
    jobs = [
        _job(request, run, directory, sae, plan, store, model, data, context_size)
        for directory, sae in saes.items()
    ]
    for job in jobs:
        job.check_destination()

    starts = [job.open() for job in jobs]  # the first write
    first = min(starts)
    if first < plan.steps:
        # one tracked run per fine-tune, recorded in its first SAE's state directory
        record_dir, name = jobs[0].state, f"{run.name}-{request.name_suffix}"
        with track_training(request.tracking, record_dir, first, name) as tracker:
            if tracker is not None:
                tracker.begin(record_dir, {job.name: job.identity for job in jobs})
                observer = Tracked(observer, tracker)
            observer.started(plan, first, request.batch_size)
            _loop(jobs, plan, data.batches(first, request.batch_size), model, request, observer)
    saved = {job.name: job.save(_record(job, model)) for job in jobs}
    return FinetuneResult(
        run,
        saved,
        {job.name: job.finetuning.cfg.name for job in jobs},
        {job.name: line for job in jobs if (line := job.last_metrics()) is not None},
        already_complete=first == plan.steps,
    )


def _selected(run: Path, names: tuple[str, ...]) -> list[Path]:
    """The SAE directories to fine-tune: those named, or every SAE the run's training saved."""
    if not run.is_dir():
        raise SaekitError(f"run {run} is not a directory; give a directory written by sae train")
    saved = {directory.name: directory for directory in saved_saes(run)}
    if not saved:
        raise SaekitError(
            f"{run} holds no saved SAEs (no saes/<name>/{CFG_FILE}); give a directory written "
            "by sae train"
        )
    if not names:
        trained = trained_saes(run)
        if not trained:
            raise SaekitError(
                f"{run} holds only fine-tuned SAEs; name the ones to fine-tune with --sae"
            )
        return trained
    unknown = [name for name in names if name not in saved]
    if unknown:
        raise SaekitError(
            f"run {run} has no SAE named {unknown[0]}; it has {', '.join(sorted(saved))}"
        )
    return [saved[name] for name in dict.fromkeys(names)]


def _check_shape(sae: Dictionary, where: Path) -> None:
    if sae.shape.cross_layer:
        raise SaekitError(
            f"{where} is a cross-layer transcoder, which sae finetune does not fine-tune (its "
            "replacement model codes each layer from the spliced stream); leave it out with "
            "--sae NAME"
        )


def _context_size(store: ActivationStore) -> int:
    size = store.spec.identity.get("context_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 3:
        raise SaekitError(
            f"store {store.location} records no context size of at least 3 tokens; fine-tune "
            "on a store written by sae harvest"
        )
    return size


def _plan(request: FinetuneRequest, context_size: int) -> Plan:
    per_step = request.batch_size * context_size
    if request.tokens < per_step:
        raise SaekitError(
            f"--tokens {request.tokens:,} does not fill one step of {request.batch_size} "
            f"contexts of {context_size} tokens ({per_step:,}); raise --tokens or lower "
            "--batch-size"
        )
    return Plan.make(request.tokens, per_step, request.tokens, warmup=0.0, decay=1.0)


def _data(
    request: FinetuneRequest, store: ActivationStore, model: LanguageModel, context_size: int
) -> ContextSource:
    if request.dataset is None:
        return StoreContexts(store, context_size, request.seed)
    source = resolve_source(request.dataset, request.split, request.text_column)
    return TextContexts(source, store, model.tokenizer, context_size, request.seed)


def _job(
    request: FinetuneRequest,
    run: Path,
    directory: Path,
    sae: Dictionary,
    plan: Plan,
    store: ActivationStore,
    model: LanguageModel,
    data: ContextSource,
    context_size: int,
) -> Job:
    """The fine-tune of the saved SAE in `directory`, its weights back in training space."""
    cfg = sae.cfg
    assert cfg is not None, "load_sae sets cfg"
    shape = sae.shape
    with torch.no_grad():  # undo the folding of the input scales (save_sae folds them again)
        sae.fold_scales_(
            [1 / cfg.scale_of(h) for h in shape.source_hooks],
            [1 / cfg.scale_of(h) for h in shape.target_hooks],
        )
    name = f"{cfg.name}-{request.name_suffix}"
    spec = dataclasses.replace(saved_spec(cfg, directory / CFG_FILE), name=name)
    lr = request.lr if request.lr is not None else LR_FRACTION * spec.lr
    terms = Terms.of(sae)
    member = Member(spec, sae, plan, request.grad_clip, lr=lr, terms=terms.used)
    identity = {
        "from": cfg.name,
        "from_weights": files_fingerprint([directory / WEIGHTS_FILE]),
        "store": {**store.spec.fixed_attrs(), "n_rows_committed": store.n_rows_committed},
        "model": {key: model.identity.get(key) for key in PROVENANCE_KEYS},
        "data": data.identity(),
        "tokens": plan.tokens,
        "steps": plan.steps,
        "contexts_per_step": request.batch_size,
        "context_size": context_size,
        "lr": lr,
        "lr_schedule": LR_SCHEDULE,
        "grad_clip": request.grad_clip,
        "loss": LOSS,
        "terms": terms.describe(),
        "seed": request.seed,
    }
    environment = {
        "model": model.name,
        "store_location": absolute_location(store.location),
        "device": str(sae.device),
        "checkpoint_every": request.checkpoint_every,
    }
    return Job(run, name, Finetuning(member, cfg, terms), identity, environment)


def _record(job: Job, model: LanguageModel) -> dict[str, Any]:
    """What the fine-tuned SAE's cfg.json says of its fine-tune (the store is in its cfg)."""
    record = {key: value for key, value in job.identity.items() if key != "store"}
    return {**record, "model": {"name": model.name, **record["model"]}}


def _loop(
    jobs: list[Job],
    plan: Plan,
    batches: Iterator[Tensor],
    model: LanguageModel,
    request: FinetuneRequest,
    observer: Observer,
) -> None:
    """Every step from the earliest job's, each job from its own first step on."""
    device = model.device
    throughput = Throughput(device)
    first = min(job.start for job in jobs)
    for step in range(first, plan.steps):
        with throughput.waiting():
            tokens_BT = next(batches).to(device)
        active = [job for job in jobs if job.start <= step]
        hooks = sorted({h for job in active for h in job.finetuning.shape.hooks})
        gradient_hooks = sorted({h for job in active for h in job.finetuning.gradient_hooks})
        clean = clean_pass(model, tokens_BT, hooks, gradient_hooks)
        for job in active:
            job.finetuning.step(model, clean, step)
        del clean
        done = step + 1
        throughput.count(tokens_BT.numel())
        observer.stepped(done)
        if done % request.log_every == 0 or done == plan.steps:
            tokens_per_s, waiting = throughput.lap()
            timing = {"tokens_per_s": tokens_per_s, "data_wait_fraction": waiting}
            record = {"step": done, "tokens": done * plan.batch_size, **timing}
            observer.logged(done, [job.log(record) for job in active])
        if done < plan.steps and checkpoint_due(done, plan.batch_size, request.checkpoint_every):
            for job in active:
                job.checkpoint(done)
    for job in jobs:
        job.checkpoint(plan.steps, complete=True)

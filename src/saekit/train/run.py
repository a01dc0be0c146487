"""A training run from start to finish: validate, calibrate, train, export.

Everything a user can get wrong is checked before anything is written or trained: the store and
hook, every spec (k ≤ latents, unique names, gradients for g-SAE), the settings, and the output
directory (a different run there is refused; the same run is continued only with `resume`).

    RUN/config.json        the fully resolved run: store, settings, plan, SAEs, calibration
    RUN/metrics.jsonl      one line per SAE per logged step
    RUN/checkpoints/       resumable state (see `checkpoint.py`)
    RUN/saes/<name>/       the trained SAEs (see `export.py`)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saekit import __version__
from saekit.base.atomic import write_json
from saekit.base.devices import resolve_device
from saekit.base.errors import IntegrityError, SaekitError
from saekit.base.locations import absolute_location
from saekit.base.outputs import (
    KINDS,
    RUN,
    make_directory,
    marker_kind,
    probe_writable,
    refuse_inside_store,
    write_marker,
)
from saekit.base.tracking import Tracking
from saekit.cache_format import ActivationStore, LoaderThreads, ShuffledLoader
from saekit.cache_format.nonfinite import NonFinitePolicy
from saekit.cache_format.reader import ROW_INDEX
from saekit.cache_format.schema import ACTIVATIONS, hook_field
from saekit.train.calibration import geometric_median, input_scale
from saekit.train.checkpoint import Checkpoint, Checkpoints
from saekit.train.config import TrainSettings
from saekit.train.export import SAELENS_DIR, save_sae
from saekit.train.layout import sae_directory
from saekit.train.member import Member, RunReads, concatenated
from saekit.train.memory import check_memory
from saekit.train.metrics import METRICS_FILE, read_metrics
from saekit.train.sae_config import SAEConfig
from saekit.train.schedule import Plan
from saekit.train.shape import Shape
from saekit.train.spec import ResolvedSpec, SAESpec, source_hooks
from saekit.train.tracking import track_training
from saekit.train.trainer import Cadence, Observer, Observers, Trainer

RUN_FORMAT = "saekit.train-run"
RUN_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
POSITION_READ_ROWS = 1 << 20


@dataclass(frozen=True)
class TrainRequest:
    """What `sae train` was asked to do. `groups` splits the SAEs into that many groups trained
    side by side, each on its own device (see `distributed.py`); None trains them together in
    this process unless `out` holds a run already split into groups."""

    store: str
    hook: str | None
    out: Path
    specs: list[SAESpec]
    settings: TrainSettings = field(default_factory=TrainSettings)
    resume: bool = False
    storage_options: dict[str, Any] | None = None
    tracking: Tracking = field(default_factory=Tracking)  # --wandb, --tensorboard
    tracking_name: str | None = None  # the tracked run's name (default: the run's directory's)
    tracking_group: str | None = None  # wandb's group (a recipe's runs share one)
    groups: int | None = None


@dataclass(frozen=True)
class RunResult:
    """Where the trained SAEs are, and whether this call trained anything."""

    run_dir: Path
    sae_dirs: dict[str, Path]
    plan: Plan
    final_metrics: dict[str, dict[str, Any]]  # the last metrics line of each SAE
    already_complete: bool = False
    tracked: tuple[str, ...] = ()  # where the trackers wrote the run, for a person


@dataclass(frozen=True)
class Share:
    """What one group of a distributed run shares with the rest of it: the whole run's SAEs
    (`run_specs`, the group's among them), whose fields it reads as the whole run reads them —
    for calibration, and for training too when rows holding NaN or Inf are skipped — so that it
    sees exactly the rows one process would; and the CPUs its worker may use for loading
    (None: all of the machine's)."""

    run_specs: tuple[SAESpec, ...] = ()
    cpus: int | None = None


@dataclass(frozen=True)
class Prepared:
    """A checked request: the store, the SAEs and their shapes, what they read, the plan and
    the run's identity. `run_reads` is what the whole run reads (more than `reads` for a group
    of a distributed run, see `Share`)."""

    store: ActivationStore
    hook: str | None
    specs: list[ResolvedSpec]
    shapes: dict[str, Shape]
    reads: RunReads
    run_reads: RunReads
    plan: Plan
    identity: dict[str, Any]


def prepare(request: TrainRequest, run_specs: tuple[SAESpec, ...] = ()) -> Prepared:
    """Everything about the request that can be checked without a device, checked: the output
    directory's place, the store and hook, every spec, gradients where they are read, the plan.
    `run_specs`: the whole run's SAEs when the request is one group of it."""
    refuse_inside_store(request.out, "train")
    store = ActivationStore.open(request.store, request.storage_options)
    hook = default_hook(store, request.hook)
    widths = {name: spec.d for name, spec in store.spec.hooks.items()}
    lr = request.settings.lr
    specs = resolve_specs(request.specs, widths, hook, lr)
    everyone = resolve_specs(list(run_specs), widths, hook, lr) if run_specs else specs
    shapes = {spec.name: spec.shape(widths, hook) for spec in everyone}
    reads, run_reads = RunReads.of(specs, shapes), RunReads.of(everyone, shapes)
    for gradient_hook in run_reads.gradient_hooks:
        store.require_gradients(gradient_hook)
    plan = make_plan(store, request.settings)
    identity = run_identity(store, hook, specs, request.settings, plan)
    return Prepared(store, hook, specs, shapes, reads, run_reads, plan, identity)


def train_here(
    request: TrainRequest, observer: Observer | None = None, share: Share | None = None
) -> RunResult:
    """Validate the request, then train every dictionary on one stream of the store's rows
    (each hook any of them reads is read once per batch), in this process on one device.
    `share` makes the run one group of a distributed run (see `Share`)."""
    share = share or Share()
    prepared = prepare(request, share.run_specs)
    store, hook, specs, shapes = prepared.store, prepared.hook, prepared.specs, prepared.shapes
    settings, plan = request.settings, prepared.plan
    check_out_dir(request.out, prepared.identity, request.resume)
    check_run_directories(request.out, [spec.name for spec in specs])
    probe_writable(request.out)

    device = resolve_device(settings.device)
    check_memory(specs, shapes, settings.batch_size, device)
    members = [
        Member(spec, spec.build(shapes[spec.name]).to(device), plan, settings.grad_clip)
        for spec in specs
    ]
    request.tracking.check()
    checkpoints = Checkpoints(request.out)
    checkpoint = checkpoints.load([s.name for s in specs]) if request.resume else None
    already_complete = checkpoint is not None and checkpoint.complete
    start = checkpoint.step if checkpoint else 0
    tracking = request.tracking if not already_complete else Tracking()
    name, group = request.tracking_name, request.tracking_group
    with track_training(tracking, request.out, start, name, group) as tracker:
        if checkpoint is None:
            scales, calibration = calibrate(store, prepared.run_reads, members, settings, device)
            identity = prepared.identity
            config = run_config(identity, plan, hook, scales, calibration, request, device)
            make_directory(request.out, request.out)
            write_json(request.out / CONFIG_FILE, config)
        else:
            config = json.loads((request.out / CONFIG_FILE).read_text())
            scales, calibration = recorded_calibration(config, hook, specs, request.out)
        write_marker(request.out, RUN)  # after config.json: a run killed between is still a run
        if tracker is not None:
            tracker.begin(request.out, config)

        cadence = Cadence(settings.log_every, settings.checkpoint_every)
        nonfinite = NonFinitePolicy(skip=settings.skip_nonfinite)
        observers = Observers(observer, tracker)
        trainer = Trainer(
            members, plan, cadence, prepared.reads, scales, request.out, observers, nonfinite
        )
        if checkpoint is not None:
            start = restore(trainer, checkpoint, checkpoints)
        if not already_complete:
            # a group skipping non-finite rows reads all the whole run reads: it skips the same
            loaded = prepared.run_reads if settings.skip_nonfinite else prepared.reads
            loader = ShuffledLoader(
                store,
                fields=(*loaded.fields(), ROW_INDEX),
                batch_size=settings.batch_size,
                seed=settings.seed,
                epochs=None,
                encoded=device.type != "cpu",  # the device decodes what the store holds
                pin_device=device if device.type == "cuda" else None,
                threads=LoaderThreads.for_machine(request.store, device, share.cpus),
            )
            trainer.run(iter(loader), start)
    tracked = tuple(tracker.where) if tracker is not None else ()
    final = {record["sae"]: record for record in read_metrics(request.out / METRICS_FILE)}
    location = absolute_location(request.store)  # where it is now (it may have moved)
    sae_dirs = {  # also after a kill between the last checkpoint and the export
        member.name: export(request.out, member, scales, calibration[member.name], config, location)
        for member in members
    }
    return RunResult(request.out, sae_dirs, plan, final, already_complete, tracked)


def export(
    out: Path,
    member: Member,
    scales: dict[str, float],
    calibration: dict[str, float],
    config: dict[str, Any],
    store_location: str,
) -> Path:
    """Save a trained member as `out/saes/<name>` (raw-activation space); return where."""
    directory = sae_directory(out, member.name)
    save_sae(member.sae, directory, sae_config(member, scales, calibration, config, store_location))
    return directory


def default_hook(store: ActivationStore, hook: str | None) -> str | None:
    """The hook of dictionaries whose spec names none: `--hook`, or the store's only hook (None
    for a store of several hooks without --hook: then every spec must name its hooks)."""
    if hook is not None or len(store.hooks) == 1:
        return store.resolve_hook(hook)
    return None


def recorded_calibration(
    config: dict[str, Any], hook: str | None, specs: list[ResolvedSpec], out: Path
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The scales and calibration a run recorded (runs before several hooks recorded one
    scale, at their hook)."""
    try:
        recorded = config["calibration"]
        scales = recorded.get("input_scales") or {hook: float(recorded["input_scale"])}
        scales = {name: float(value) for name, value in scales.items()}
        calibration = {s.name: dict(recorded["saes"][s.name]) for s in specs}
    except (KeyError, TypeError, ValueError, AttributeError):
        raise SaekitError(
            f"{out / CONFIG_FILE} lacks the run's calibration; the run directory is "
            "damaged, start a new run in another --out"
        ) from None
    return scales, calibration


def restore(trainer: Trainer, checkpoint: Checkpoint, checkpoints: Checkpoints) -> int:
    """Load a checkpoint into the trainer; return the step to continue from."""
    try:
        return trainer.restore(checkpoint.trainer, checkpoint.members)
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SaekitError(
            f"the checkpoint in {checkpoints.root} does not fit this run ({reason}); the run's "
            "checkpoints are damaged, start a new run in another --out"
        ) from None


def resolve_specs(
    specs: list[SAESpec], widths: dict[str, int], hook: str | None, default_lr: float | None
) -> list[ResolvedSpec]:
    """Every spec with its defaults, for the width of the first hook it reads."""
    if not specs:
        raise SaekitError("no SAE to train; give one with --sae, e.g. --sae topk:k=32")
    resolved = []
    for spec in specs:
        first = source_hooks(spec.options, hook, spec.source)[0]
        if first not in widths:
            raise SaekitError(
                f"{spec.source}: the store has no hook {first} (it has {', '.join(widths)}); "
                "harvest it or change the spec"
            )
        resolved.append(spec.resolve(widths[first], default_lr))
    names = [spec.name for spec in resolved]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise SaekitError(
            f"two SAEs would both be named {twice[0]}; give them different settings or names "
            "(key name=...)"
        )
    return resolved


def make_plan(store: ActivationStore, settings: TrainSettings) -> Plan:
    """Steps of the run: `tokens` (default one epoch) in batches; beyond one epoch, several."""
    store.check_split()  # training must not read held-out rows a damaged layout hands it
    rows = eligible_training_rows(store)
    if rows == 0:
        raise SaekitError(f"store {store.location} has no training rows; harvest more tokens")
    tokens = settings.tokens or rows
    if tokens < settings.batch_size:
        raise SaekitError(
            f"{tokens:,} tokens do not fill one batch of {settings.batch_size:,}; raise --tokens "
            "or lower --batch-size"
        )
    return Plan.make(tokens, settings.batch_size, rows, settings.warmup, settings.decay)


def eligible_training_rows(store: ActivationStore) -> int:
    """Training rows the loader serves per epoch: those not at position 0."""
    count = 0
    for start, stop in store.ranges("train"):
        for first in range(start, stop, POSITION_READ_ROWS):
            last = min(stop, first + POSITION_READ_ROWS)
            count += int(np.count_nonzero(store.read(["position"], first, last)["position"]))
    return count


def run_identity(
    store: ActivationStore,
    hook: str,
    specs: list[ResolvedSpec],
    settings: TrainSettings,
    plan: Plan,
) -> dict[str, Any]:
    """What makes a run this run: compared when resuming (device and checkpoint cadence may
    change; the store may have moved, but its content must be the same)."""
    compared = dataclasses.asdict(settings)
    for free in ("device", "checkpoint_every", "skip_nonfinite"):
        compared.pop(free)
    return {
        "store": {
            **store.spec.fixed_attrs(),
            "n_rows_committed": store.n_rows_committed,
            "hook": hook,
        },
        "settings": {**compared, "tokens": plan.tokens},
        "saes": [{"name": s.name, "variant": s.variant, "options": _options(s)} for s in specs],
    }


def _options(spec: ResolvedSpec) -> dict[str, Any]:
    """The SAE's options without `name`: the entry's own name says it, so `name=` given equal to
    the derived name is the same SAE (how a run whose g-SAEs were named before `selection_only`
    became the default is resumed: `selection_only=false,name=<the name it has>`)."""
    return {key: value for key, value in spec.options_dict().items() if key != "name"}


def check_out_dir(out: Path, identity: dict[str, Any], resume: bool) -> None:
    """Refuse an output directory that holds something else, or this run without `resume`.

    A run is recognised by its `config.json`, which records this very run (its store, SAEs and
    settings), and, from this saekit on, by the marker saekit writes beside it; a directory
    that another kind of output's marker claims is refused."""
    if out.is_symlink():
        raise SaekitError(
            f"--out {out} is a symbolic link; saekit never writes through links, give the "
            "directory itself"
        )
    if out.exists() and not out.is_dir():
        raise SaekitError(f"--out {out} is a file; choose a directory")
    if not out.exists() or not any(out.iterdir()):
        return
    kind = marker_kind(out)
    if kind not in (None, RUN):
        raise SaekitError(f"--out {out} holds {KINDS[kind]}, not a training run")
    try:
        stored = json.loads((out / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        raise SaekitError(
            f"--out {out} is not empty and holds no training run; choose a new or empty directory"
        ) from None
    if not isinstance(stored, dict) or stored.get("format") != RUN_FORMAT:
        raise SaekitError(f"--out {out} holds something else than a training run")
    version = stored.get("format_version", RUN_FORMAT_VERSION)
    if isinstance(version, int) and not isinstance(version, bool) and version > RUN_FORMAT_VERSION:
        raise SaekitError(
            f"{out / CONFIG_FILE} uses run format version {version}, newer than the "
            f"{RUN_FORMAT_VERSION} this saekit reads; upgrade saekit"
        )
    changed = differing_keys(stored.get("run"), identity)
    if changed:
        shown = ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "")
        raise SaekitError(
            f"--out {out} holds a different run (it differs in {shown}); choose another --out, "
            "or repeat that run's settings to resume it"
        )
    if not resume:
        raise SaekitError(
            f"--out {out} already holds this run; pass --resume to continue it, or choose "
            "another --out"
        )


def check_run_directories(out: Path, names: list[str]) -> None:
    """Refuse a run whose checkpoints or saved SAEs would be written through a symbolic link
    (checked again where they are written)."""
    saes = out / "saes"
    for path in (out / "checkpoints", saes, *(saes / n for n in names),
                 *(saes / n / SAELENS_DIR for n in names)):  # fmt: skip
        if path.is_symlink():
            raise SaekitError(
                f"{path} is a symbolic link; saekit never writes through links in a run: "
                "remove the link, or start a new run in another --out"
            )


def differing_keys(stored: Any, wanted: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two nested dicts differ (lists of SAEs are compared by name)."""
    stored, wanted = _by_name(stored), _by_name(wanted)
    if isinstance(stored, dict) and isinstance(wanted, dict):
        keys = sorted(set(stored) | set(wanted), key=str)
        return [
            path
            for key in keys
            for path in differing_keys(stored.get(key), wanted.get(key), f"{prefix}{key}.")
        ]
    return [] if stored == wanted else [prefix.rstrip(".")]


def _by_name(value: Any) -> Any:
    if isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value):
        return {v["name"]: v for v in value}
    return value


def calibrate(
    store: ActivationStore,
    reads: RunReads,
    members: list[Member],
    settings: TrainSettings,
    device: torch.device,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """The input scale of every hook read, from a sample of the store, then every dictionary's
    initial weights and data-dependent settings. Deterministic for the seed, and independent of
    which other dictionaries share the run."""
    loader = ShuffledLoader(
        store,
        fields=reads.fields(),
        batch_size=settings.calibration_rows,
        seed=settings.seed,
        epochs=1,
        drop_last=False,
    )
    # rows holding NaN or Inf are left out of the sample; training applies the policy to them
    sample = next(iter(loader)).without_nonfinite()
    if not len(next(iter(sample.values()))):
        raise IntegrityError(f"store {store.location} has no finite rows to calibrate on")
    scales = {hook: input_scale(sample[hook_field(ACTIVATIONS, hook)]) for hook in reads.hooks}
    x_by_hook, g_by_hook = reads.scaled(sample.on(device), scales)
    medians: dict[tuple[str, ...], Tensor] = {}

    def median_of(hooks: tuple[str, ...]) -> Tensor:
        if hooks not in medians:
            medians[hooks] = geometric_median(concatenated(x_by_hook, hooks)).cpu()
        return medians[hooks]

    calibration = {}
    for member in members:
        activation, shape = member.sae.activation, member.sae.shape
        generator = torch.Generator().manual_seed(init_seed(settings.seed, member.name))
        from_data = activation.b_dec_from_data
        b_in = (
            None if shape.reconstructs_its_input or not from_data else median_of(shape.source_hooks)
        )
        b_dec = median_of(shape.target_hooks) if from_data else None
        member.sae.init_weights_(generator, activation.decoder_init_norm, b_dec, b_in)
        head = slice(0, settings.batch_size)  # a training-batch-sized sample
        x_BD, _, g_BE = member.inputs(x_by_hook, g_by_hook)
        selecting = g_BE is not None and activation.needs_gradients
        calibration[member.name] = activation.calibrate_(
            member.sae, x_BD[head], g_BE[head] if selecting else None
        )
    return scales, calibration


def init_seed(seed: int, name: str) -> int:
    """The seed of an SAE's initial weights: from the run seed and its name only."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def run_config(
    identity: dict[str, Any],
    plan: Plan,
    hook: str | None,
    scales: dict[str, float],
    calibration: dict[str, dict[str, float]],
    request: TrainRequest,
    device: torch.device,
) -> dict[str, Any]:
    """config.json: the run's identity, plan and calibration (`input_scale` at the run's hook,
    as runs of one hook recorded it, and every hook's in `input_scales`)."""
    scale = {"input_scale": scales[hook]} if hook in scales else {}
    return {
        "format": RUN_FORMAT,
        "format_version": RUN_FORMAT_VERSION,
        "saekit_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": identity,
        "plan": {**dataclasses.asdict(plan), "tokens": plan.tokens, "epochs": plan.epochs},
        "calibration": {**scale, "input_scales": scales, "saes": calibration},
        "environment": {
            "store_location": absolute_location(request.store),
            "device": str(device),
            "checkpoint_every": request.settings.checkpoint_every,
        },
    }


def sae_config(
    member: Member,
    scales: dict[str, float],
    calibration: dict[str, float],
    config: dict[str, Any],
    store_location: str,
) -> SAEConfig:
    """What the saved dictionary's cfg.json says. An SAE on one hook records no shape and its
    one scale, as SAEs saved before other shapes existed do."""
    store, shape = config["run"]["store"], member.sae.shape
    single = shape == Shape.single(shape.sources[0].hook, shape.d_in)
    return SAEConfig(
        name=member.name,
        variant=member.spec.variant,
        hook=shape.sources[0].hook,
        d_in=shape.d_in,
        d_sae=member.sae.d_sae,
        k=getattr(member.spec.options, "k", None),
        options=member.spec.options_dict(),
        calibration=calibration,
        input_scale=scales[shape.sources[0].hook],
        store={
            "location": store_location,
            "identity": store["identity"],
            "n_rows_committed": store["n_rows_committed"],
            "holdout_rows": store["layout"]["holdout_rows"],
        },
        training={**config["plan"], "seed": config["run"]["settings"]["seed"]},
        shape=None if single else shape.to_json(),
        input_scales=None if single else {hook: scales[hook] for hook in shape.hooks},
    )

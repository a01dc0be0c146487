"""Distributed runs: a run's SAEs split into groups, each group trained on its own device.

Every group is a run of its SAEs over the same plan, with the run's seed: it streams the same
batches of the store in the same order, and each SAE's initial weights come from the run's seed
and its name, so every SAE ends exactly as it would in one process (a group also reads, for its
calibration sample, every field the whole run reads: see `run.Share`). Groups run as tasks on a
dask cluster (`saekit.base.cluster`, one group per worker at a time, on the worker's own device)
or one after another in this process. While the run is in progress its directory holds:

    RUN/groups/split.json       the run's identity and each group's SAEs (what a resume repeats)
    RUN/groups/<i>/             group i: a run of its SAEs in the single-process layout
    RUN/groups/locks/<i>.lock   held by the process training group i (kill -9 releases it)
    RUN/groups/stop             written when a group failed: the others stop at their next step

A group whose worker dies is rescheduled by dask and resumes from its last checkpoint; a group
that fails stops the run (the others stop, keeping their checkpoints; finished groups keep their
SAEs in RUN/groups/<i>/saes). When every group is done, the run is assembled into the layout one
process writes — config.json, metrics.jsonl (lines in one process's order), the final checkpoint
(every SAE's state file linked from its group's), saes/ — and RUN/groups is removed.

RUN and each group's directory carry saekit's marker of a run (`.saekit-output.json`, written
once split.json, or the group's config.json, is there), and nothing below RUN is written through
a symbolic link (`base.outputs.make_directory`). Trackers (`--wandb`, `--tensorboard`) follow the
run from this process, not from the groups: the assembled metrics are sent to them, step by step
in one process's order, once every group is done (a run in groups is tracked when it finishes,
not while it trains).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saekit.base.atomic import link_or_copy, write_atomically, write_json
from saekit.base.cluster import Cluster, on_worker, run_tasks
from saekit.base.errors import SaekitError
from saekit.base.locations import absolute_location
from saekit.base.outputs import (
    KINDS,
    RUN,
    make_directory,
    marker_kind,
    probe_writable,
    refuse_links,
    remove_directory,
    write_marker,
)
from saekit.base.tracking import Tracking
from saekit.cache_format.locking import LockHeld, local_lock, new_owner
from saekit.train.checkpoint import Checkpoints, run_finished
from saekit.train.layout import sae_directory
from saekit.train.member import Member
from saekit.train.metrics import METRICS_FILE, read_metrics
from saekit.train.run import (
    CONFIG_FILE,
    Prepared,
    RunResult,
    Share,
    TrainRequest,
    check_out_dir,
    check_run_directories,
    differing_keys,
    export,
    prepare,
    recorded_calibration,
    run_config,
    train_here,
)
from saekit.train.spec import SAESpec
from saekit.train.split import Cost, costs, read_costs, split, time_fraction
from saekit.train.tracking import track_training
from saekit.train.trainer import Observer

TRAIN_RESOURCE = "saekit-train"  # each group task takes one: one group per worker at a time
GROUPS_DIR = "groups"
SPLIT_FILE = "split.json"
SPLIT_FORMAT = "saekit.train-split"
STOP_FILE = "stop"
STOP_CHECK_SECONDS = 1.0


class GroupStopped(SaekitError):
    """A group stopped because another group of its run failed."""


def is_split(out: Path) -> bool:
    """Whether `out` holds a distributed run that is not assembled yet."""
    return (out / GROUPS_DIR / SPLIT_FILE).is_file()


@dataclass(frozen=True)
class GroupTask:
    """One group of a distributed run: its own run request, the whole run's SAEs, its index."""

    request: TrainRequest
    run_specs: tuple[SAESpec, ...]
    index: int

    @property
    def root(self) -> Path:
        return self.request.out.parent


def run_group(task: GroupTask, observer: Observer | None = None, cpus: int | None = None) -> None:
    """Train (or resume) one group, holding its lock, stopping if the run's stop file appears."""
    watch = StopWatch(task.root / STOP_FILE, observer)
    make_directory(task.request.out, task.root.parent)  # RUN/groups/<i>, never through a link
    try:
        with local_lock(task.root, str(task.index)):
            train_here(task.request, watch, Share(task.run_specs, cpus))
    except LockHeld as held:
        raise SaekitError(
            f"group {task.index} of run {task.root.parent} is being trained by another process "
            f"({held.holder}); wait for it to finish, or stop it"
        ) from None


def _group_task(task: GroupTask) -> None:
    """A dask task: train one group on this worker's own device."""
    settings = task.request.settings
    placement = on_worker(settings.device, TRAIN_RESOURCE)
    settings = dataclasses.replace(settings, device=str(placement.device))
    request = dataclasses.replace(task.request, settings=settings)
    run_group(dataclasses.replace(task, request=request), cpus=placement.threads)


class StopWatch(Observer):
    """Passes a group's progress on, and stops the group (`GroupStopped`) once the run's stop
    file exists (looked for at most once a second)."""

    def __init__(self, stop_file: Path, inner: Observer | None) -> None:
        self.stop_file, self.inner = stop_file, inner or Observer()
        self._looked = time.monotonic()

    def started(self, plan: Any, start_step: int) -> None:
        self.inner.started(plan, start_step)

    def stepped(self, step: int, epoch: int) -> None:
        self.inner.stepped(step, epoch)
        if time.monotonic() - self._looked >= STOP_CHECK_SECONDS:
            self._looked = time.monotonic()
            if self.stop_file.exists():
                raise GroupStopped(f"stopped at step {step}: another group of the run failed")

    def epoch_started(self, epoch: int, plan: Any) -> None:
        self.inner.epoch_started(epoch, plan)

    def logged(self, step: int, records: list[dict[str, Any]]) -> None:
        self.inner.logged(step, records)

    def checkpointed(self, step: int) -> None:
        self.inner.checkpointed(step)


def train_in_groups(
    request: TrainRequest, observer: Observer | None = None, cluster: Cluster | None = None
) -> RunResult:
    """Train the request's SAEs in groups (see the module docstring): on `cluster`, or one group
    after another here. Everything is checked before any worker starts."""
    observer = observer or Observer()
    prepared = prepare(request)
    names = [spec.name for spec in prepared.specs]
    root = request.out / GROUPS_DIR
    model = cost_model(prepared, request.settings.device)
    check_run_directories(request.out, names)
    refuse_links(request.out, [GROUPS_DIR])
    if not is_split(request.out):
        check_out_dir(request.out, prepared.identity, request.resume)
        if run_finished(request.out):
            return reexport(request, prepared)
        if (request.out / CONFIG_FILE).exists():
            raise SaekitError(
                f"--out {request.out} holds this run, trained in one process and not finished; "
                "resume it without --groups and --cluster"
            )
        probe_writable(request.out)
        request.tracking.check()
        groups = new_split(request, prepared, cluster, model)
    else:
        groups = recorded_split(request, prepared)
        probe_writable(request.out)
        request.tracking.check()
    observer.split(groups, time_fraction(groups, *model))
    tasks = group_tasks(request, prepared, groups)
    (root / STOP_FILE).unlink(missing_ok=True)
    todo = [task for task in tasks if not run_finished(task.request.out)]
    if cluster is None:
        for task in todo:
            run_group(task, observer)
    elif todo:
        progress = GroupProgress(observer, prepared, [task.request.out for task in tasks])
        run_tasks(
            cluster,
            _group_task,
            todo,
            "group",
            new_owner(),
            poll=progress.poll,
            stop=(root / STOP_FILE).touch,
        )
        progress.poll()
    config = assemble(request, prepared, groups)
    tracked = track_assembled(request, config)
    remove_directory(root)
    final = {record["sae"]: record for record in read_metrics(request.out / METRICS_FILE)}
    sae_dirs = {name: sae_directory(request.out, name) for name in names}
    return RunResult(request.out, sae_dirs, prepared.plan, final, tracked=tracked)


def track_assembled(request: TrainRequest, config: dict[str, Any]) -> tuple[str, ...]:
    """Send an assembled run to its trackers, as one process's run would have sent it: the
    config, then each logged step's metrics lines in order. Returns where they wrote it."""
    if not request.tracking:
        return ()
    records = read_metrics(request.out / METRICS_FILE)
    name, group = request.tracking_name, request.tracking_group
    with track_training(request.tracking, request.out, 0, name, group) as tracker:
        assert tracker is not None, "something is tracked"
        tracker.begin(request.out, config)
        by_step: dict[int, list[dict[str, Any]]] = {}
        for record in records:
            by_step.setdefault(int(record["step"]), []).append(record)
        for step, logged in sorted(by_step.items()):
            tracker.logged(step, logged)
    return tuple(tracker.where)


CostModel = tuple[dict[str, Cost], dict[tuple[str, str], float]]


def cost_model(prepared: Prepared, device: str) -> CostModel:
    """Each SAE's cost and what reading each field costs, on the kind of device `--device`
    means here (the workers of a cluster elsewhere are taken to be of the same kind)."""
    by_name = costs(prepared.specs, prepared.shapes, prepared.store)
    fields = {field for cost in by_name.values() for field in cost.fields}
    kind = "cpu" if device == "cpu" or not torch.cuda.is_available() else "cuda"
    return by_name, read_costs(prepared.store, fields, kind)


def new_split(
    request: TrainRequest, prepared: Prepared, cluster: Cluster | None, model: CostModel
) -> list[list[str]]:
    """Split the SAEs into `--groups` groups (default: one per worker of the cluster) and record
    the split in RUN/groups/split.json."""
    if request.groups is not None and request.groups < 1:
        raise SaekitError(f"--groups must be positive, not {request.groups}")
    count = request.groups or (cluster.workers() if cluster is not None else 1)
    names = [spec.name for spec in prepared.specs]
    groups = split(names, *model, count)
    root = make_directory(request.out / GROUPS_DIR, request.out)
    record = {"format": SPLIT_FORMAT, "run": prepared.identity, "groups": groups}
    write_json(root / SPLIT_FILE, record)
    write_marker(request.out, RUN)  # after split.json: a run killed between is still a run
    return groups


def recorded_split(request: TrainRequest, prepared: Prepared) -> list[list[str]]:
    """The split of the run in progress in RUN, which must be this run, resumed."""
    path = request.out / GROUPS_DIR / SPLIT_FILE
    kind = marker_kind(request.out)
    if kind not in (None, RUN):
        raise SaekitError(f"--out {request.out} holds {KINDS[kind]}, not a training run")
    try:
        record = json.loads(path.read_text())
        groups = [[str(name) for name in group] for group in record["groups"]]
        stored = record["run"]
    except (OSError, ValueError, KeyError, TypeError):
        raise SaekitError(
            f"{path} cannot be read; the run's groups are damaged, start a new run in another --out"
        ) from None
    changed = differing_keys(stored, prepared.identity)
    if changed:
        shown = ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "")
        raise SaekitError(
            f"--out {request.out} holds a different run (it differs in {shown}); choose another "
            "--out, or repeat that run's settings to resume it"
        )
    if not request.resume:
        raise SaekitError(
            f"--out {request.out} already holds this run; pass --resume to continue it, or "
            "choose another --out"
        )
    if request.groups is not None and request.groups != len(groups):
        raise SaekitError(
            f"--out {request.out} holds this run split into {len(groups)} groups, not "
            f"{request.groups}; resume it with --groups {len(groups)} or without --groups"
        )
    return groups


def group_tasks(
    request: TrainRequest, prepared: Prepared, groups: list[list[str]]
) -> list[GroupTask]:
    """Each group's task: a request for its SAEs, resuming whatever it finds, with the store's
    location and the group's directory as every worker sees them (absolute)."""
    given = dict(zip([spec.name for spec in prepared.specs], request.specs, strict=True))
    root = request.out.absolute() / GROUPS_DIR
    tasks = []
    for index, group in enumerate(groups):
        group_request = dataclasses.replace(
            request,
            store=absolute_location(request.store),
            out=root / str(index),
            specs=[given[name] for name in group],
            resume=True,
            groups=None,
            tracking=Tracking(),  # the run is tracked from this process (`track_assembled`)
        )
        tasks.append(GroupTask(group_request, tuple(request.specs), index))
    return tasks


def assemble(request: TrainRequest, prepared: Prepared, groups: list[list[str]]) -> dict[str, Any]:
    """Write the finished groups into RUN as one process writes a run (see the module
    docstring); safe to repeat after a kill, since RUN/groups goes last. Returns the run's
    config."""
    out, plan = request.out, prepared.plan
    root = out / GROUPS_DIR
    directories = [root / str(index) for index in range(len(groups))]
    configs = [json.loads((d / CONFIG_FILE).read_text()) for d in directories]
    calibration: dict[str, Any] = {}
    for config in configs:
        calibration.update(config["calibration"]["saes"])
    names = [spec.name for spec in prepared.specs]
    scales = configs[0]["calibration"]["input_scales"]
    device = torch.device(configs[0]["environment"]["device"])
    calibration = {name: calibration[name] for name in names}
    hook = prepared.hook
    config = run_config(prepared.identity, plan, hook, scales, calibration, request, device)
    config["environment"]["groups"] = [
        {"saes": group, "device": c["environment"]["device"]}
        for group, c in zip(groups, configs, strict=True)
    ]
    metrics = merged_metrics([d / METRICS_FILE for d in directories], names)
    write_atomically(out / METRICS_FILE, lambda file: file.write(metrics))
    trainer = Checkpoints(directories[0]).load([]).trainer  # the same in every group but...
    trainer["metrics_offset"] = len(metrics)  # ... the offset into the merged metrics
    group_of = {name: index for index, group in enumerate(groups) for name in group}
    files = {name: Checkpoints(directories[group_of[name]]).member_file(name) for name in names}
    Checkpoints(out).gather(plan.steps, trainer, files, complete=True)
    for name in names:
        target = sae_directory(out, name)
        make_directory(target.parent, out)  # RUN/saes, never through a link
        copy_saved(sae_directory(directories[group_of[name]], name), target)
    write_json(out / CONFIG_FILE, config)
    write_marker(out, RUN)
    return config


def merged_metrics(paths: list[Path], names: list[str]) -> bytes:
    """The groups' metrics lines in the order one process writes them: by step, then in the
    order of the run's SAEs."""
    order = {name: index for index, name in enumerate(names)}
    lines = []
    for path in paths:
        for line in path.read_bytes().splitlines(keepends=True):
            record = json.loads(line)
            lines.append(((record["step"], order[record["sae"]]), line))
    return b"".join(line for _, line in sorted(lines, key=lambda item: item[0]))


def copy_saved(source: Path, target: Path) -> None:
    """A saved SAE's directory copied (files linked where possible) into `target`, replacing it
    whole: the copy is made beside it, then renamed."""
    partial = target.with_name(f".{target.name}.partial")
    remove_directory(partial)
    shutil.copytree(source, partial, copy_function=lambda s, t: link_or_copy(Path(s), Path(t)))
    remove_directory(target)  # a link in its place is removed itself, never followed
    partial.rename(target)


def reexport(request: TrainRequest, prepared: Prepared) -> RunResult:
    """A finished run's SAEs exported again from its final checkpoint, one at a time on the CPU
    (however many there are), as resuming a finished run does."""
    out = request.out
    config = json.loads((out / CONFIG_FILE).read_text())
    scales, calibration = recorded_calibration(config, prepared.hook, prepared.specs, out)
    checkpoints, location = Checkpoints(out), absolute_location(request.store)
    sae_dirs = {}
    for spec in prepared.specs:
        sae = spec.build(prepared.shapes[spec.name])
        member = Member(spec, sae, prepared.plan, request.settings.grad_clip)
        checkpoint = checkpoints.load([spec.name])
        assert checkpoint is not None, "the run finished"
        member.load_state_dict(checkpoint.members[spec.name])
        sae_dirs[spec.name] = export(out, member, scales, calibration[spec.name], config, location)
    final = {record["sae"]: record for record in read_metrics(out / METRICS_FILE)}
    return RunResult(out, sae_dirs, prepared.plan, final, already_complete=True)


class GroupProgress:
    """The progress of a run's groups on a cluster, read from their metrics files and reported
    to an observer as one run's: the step every group has reached, the slowest group's rates."""

    def __init__(self, observer: Observer, prepared: Prepared, directories: list[Path]) -> None:
        self.observer, self.plan = observer, prepared.plan
        self.files = [directory / METRICS_FILE for directory in directories]
        self.step: int | None = None
        self.epoch = -1

    def poll(self) -> None:
        latest = [last_record(path) for path in self.files]
        step = min((record or {}).get("step", 0) for record in latest)
        if self.step is None:
            self.observer.started(self.plan, step)
        elif step == self.step:
            return
        self.step = step
        slowest = next((r for r in latest if r and r["step"] == step), None)
        if slowest is None:
            return
        if slowest["epoch"] != self.epoch:
            self.epoch = slowest["epoch"]
            self.observer.epoch_started(self.epoch, self.plan)
        self.observer.stepped(step, self.epoch)
        self.observer.logged(step, [slowest])


def last_record(path: Path, tail: int = 8192) -> dict[str, Any] | None:
    """The last complete line of a metrics file being written (None before the first)."""
    try:
        with path.open("rb") as file:
            file.seek(0, 2)
            size = file.tell()
            file.seek(max(0, size - tail))
            lines = file.read().split(b"\n")
    except FileNotFoundError:
        return None
    complete = [line for line in lines[:-1] if line.strip()]  # the last may be half-written
    return json.loads(complete[-1]) if complete else None

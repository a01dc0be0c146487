"""Kill a process on its own progress, not on the clock: SIGKILL at the N-th write it makes.

A test that kills a writer after a random sleep kills nothing on a machine fast enough to finish
first. Here the process counts its own *events* (every zarr object written to a local store,
every crash-safe file written by `sae train`, every SAE training or fine-tuning step) and kills
itself at the N-th, so every trial dies mid-work on any machine, fast or slow. Events of kind
`put` can also die half-way: a torn temporary file is left behind, as a kill during the write
would leave it.

Use it in a child process (`python -c "import kill_switch; kill_switch.arm(N); ..."`), on a
dask worker (`client.run(kill_switch.arm, N)`), or with `count_events` to size N.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

KILLED = -signal.SIGKILL  # returncode of a child process that was killed by the switch
_lock = threading.Lock()


def _patch(on_event: Callable[[str, tuple], None]) -> Callable[[], None]:
    """Route every event through `on_event(kind, args)`; return a function that undoes it."""
    import zarr.storage._local as local

    import saekit.base.atomic as atomic
    import saekit.finetune.objective as objective
    import saekit.train.member as member

    originals = [
        (local, "_put", local._put, "put"),
        (atomic, "write_atomically", atomic.write_atomically, "file"),
        (member.Member, "step", member.Member.step, "step"),
        (objective.Finetuning, "step", objective.Finetuning.step, "step"),
    ]
    for owner, name, original, kind in originals:

        def counted(*args, _original=original, _kind=kind, **kwargs):
            on_event(_kind, args)
            return _original(*args, **kwargs)

        setattr(owner, name, counted)

    def undo() -> None:
        for owner, name, original, _ in originals:
            setattr(owner, name, original)

    return undo


def arm(kill_at: int, torn: bool = False) -> None:
    """SIGKILL this process at its `kill_at`-th event (1-based). With `torn`, when that event
    writes a zarr object, first leave half of it in a temporary file, as a kill mid-write does."""
    counter = itertools.count(1)

    def on_event(kind: str, args: tuple) -> None:
        with _lock:
            if next(counter) != kill_at:
                return
            if torn and kind == "put":
                path, value = Path(args[0]), args[1].to_bytes()
                path.parent.mkdir(parents=True, exist_ok=True)
                path.with_suffix(".torn.partial").write_bytes(value[: len(value) // 2])
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    _patch(on_event)


@contextlib.contextmanager
def count_events() -> Iterator[list[str]]:
    """Count the events of the code run inside the block (in this process): a list of kinds."""
    events: list[str] = []

    def on_event(kind: str, args: tuple) -> None:
        with _lock:
            events.append(kind)

    undo = _patch(on_event)
    try:
        yield events
    finally:
        undo()


def child_command(kill_at: int, code: str, *argv: object, torn: bool = False) -> list[str]:
    """A Python command line that arms the switch, then runs `code` with `sys.argv[1:]` =
    `argv` (tests/ on the path)."""
    prelude = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"import kill_switch; kill_switch.arm({kill_at}, torn={torn})\n"
    )
    return [sys.executable, "-c", prelude + code, *map(str, argv)]

"""Online batch mode of Mutual / Feature Choice before and after the fix of issue #10.

Before, `sae eval` ran the training-time selection over the rows of one LM batch (its contexts,
in context order, position 0 out); now it selects over the held-out rows in the store's shuffled
order, in batches of the training size, as offline batch mode does. This script splices one run's
batch-dependent SAEs both ways, beside their threshold mode, on the same held-out contexts:

    .venv/bin/python experiments/batch_mode_before_after.py STORE RUN MODEL \
        [--contexts 16] [--only NAME]

and prints loss added per SAE and mode. `--contexts` is the LM batch the old path selected over.
"""

from __future__ import annotations

import argparse

import torch

from saekit.cache_format import ActivationStore
from saekit.cache_format.nonfinite import NonFinitePolicy
from saekit.evaluate.heldout import heldout_contexts, heldout_row_slots, training_mean
from saekit.evaluate.online import online_metrics
from saekit.evaluate.targets import load_targets
from saekit.lm.model import load_model


class LMBatchSelection:
    """A batch-mode target that selects over one LM batch of contexts, as before the fix."""

    def __init__(self, target: object, rows: int) -> None:
        self._target, self.batch_rows = target, rows

    def __getattr__(self, name: str) -> object:
        return getattr(self._target, name)

    @property
    def label(self) -> str:
        return f"{self._target.name} [batch, LM-batch rows]"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("run")
    parser.add_argument("model")
    parser.add_argument("--contexts", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--only", default="", help="Only SAEs whose name contains this.")
    args = parser.parse_args()
    device = torch.device("cpu")
    store = ActivationStore.open(args.store)
    targets = [
        t
        for t in load_targets([args.run], store, device)
        if t.mode in ("threshold", "batch") and args.only in t.name
    ]
    hook = targets[0].hook
    contexts = heldout_contexts(store, args.tokens)
    context_size = contexts.shape[1]
    old = [
        LMBatchSelection(t, args.contexts * (context_size - 1))
        for t in targets
        if t.mode == "batch"
    ]
    means = {hook: training_mean(store, hook, NonFinitePolicy())}
    model = load_model(args.model, device)
    fixed = online_metrics(
        model, contexts, targets, means, args.contexts, device,
        row_slots=heldout_row_slots(store, args.tokens),
    )  # fmt: skip
    n, t = contexts.shape
    in_context_order = (
        torch.arange(n).repeat_interleave(t - 1),
        torch.arange(1, t).repeat(n),
    )  # every row of every context, context by context: the old LM-batch rows
    before = online_metrics(
        model, contexts, old, means, args.contexts, device, row_slots=in_context_order
    )
    print(f"{len(contexts)} contexts of {context_size} tokens; LM batch {args.contexts} contexts")
    for label, metrics in sorted({**fixed, **before}.items()):
        print(f"{label:60s} loss added {metrics['loss_added']:.4f}  kl {metrics['kl']:.4f}")


if __name__ == "__main__":
    main()

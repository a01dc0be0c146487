"""The eval stage: SAEs measured on a store's held-out tokens (offline, spliced into the LM,
steering) through one path (`Evaluation`), and the `sae eval` report. The splice of a
dictionary into the LM (`tail_rows`, `reconstruction_edits`) and the contexts rebuilt from a
store's token ids (`rebuilt_contexts`) also serve the KL fine-tune."""

from saekit.evaluate.evaluation import EvalSettings, Evaluation, Steering, report_row
from saekit.evaluate.heldout import check_holdout, holdout_batches, rebuilt_contexts
from saekit.evaluate.offline import DENSE_THRESHOLD
from saekit.evaluate.online import reconstruction_edits, tail_rows
from saekit.evaluate.report import INSPECT_SITE, link_inspect_site, report_head
from saekit.evaluate.runner import EvalRequest, evaluate
from saekit.evaluate.targets import (
    Target,
    check_against_store,
    check_provenance,
    inspection_target,
    load_targets,
    targets_of,
    trained_store,
)
from saekit.evaluate.tracking import check_tracking, track_report

__all__ = [
    "DENSE_THRESHOLD",
    "INSPECT_SITE",
    "EvalRequest",
    "EvalSettings",
    "Evaluation",
    "Steering",
    "Target",
    "check_against_store",
    "check_holdout",
    "check_provenance",
    "check_tracking",
    "evaluate",
    "holdout_batches",
    "inspection_target",
    "link_inspect_site",
    "load_targets",
    "rebuilt_contexts",
    "reconstruction_edits",
    "report_head",
    "report_row",
    "tail_rows",
    "targets_of",
    "track_report",
    "trained_store",
]

"""The eval stage: SAEs measured on a store's held-out tokens (offline, spliced into the LM,
steering) through one path (`Evaluation`), and the `sae eval` report."""

from saekit.evaluate.evaluation import EvalSettings, Evaluation, Steering, report_row
from saekit.evaluate.heldout import check_holdout, holdout_batches
from saekit.evaluate.offline import DENSE_THRESHOLD
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
    "report_head",
    "report_row",
    "targets_of",
    "track_report",
    "trained_store",
]

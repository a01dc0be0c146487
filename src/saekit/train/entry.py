"""`saekit.train.train`: a run in this process on one device (the default), or split into
groups of SAEs, each on its own device (`distributed.py`)."""

from __future__ import annotations

from saekit.base.cluster import Cluster
from saekit.train.distributed import is_split, train_in_groups
from saekit.train.run import RunResult, TrainRequest, train_here
from saekit.train.trainer import Observer


def train(
    request: TrainRequest, observer: Observer | None = None, cluster: Cluster | None = None
) -> RunResult:
    """Train the request's SAEs: in groups when `request.groups` or a cluster is given, or when
    the run directory holds a run split into groups (its groups then continue on `cluster`, or
    one after another here); otherwise every SAE in this process, on one stream of batches."""
    if cluster is not None or request.groups is not None or is_split(request.out):
        return train_in_groups(request, observer, cluster)
    return train_here(request, observer)

"""The harvest stage: run a causal LM over text and store activations and loss gradients."""

from saekit.harvest.distributed import harvest_shards, parse_shard
from saekit.harvest.harvester import (
    HarvestConfig,
    HarvestPlan,
    HarvestResult,
    harvest,
    plan_harvest,
    run_harvest,
)

__all__ = [
    "HarvestConfig",
    "HarvestPlan",
    "HarvestResult",
    "harvest",
    "harvest_shards",
    "parse_shard",
    "plan_harvest",
    "run_harvest",
]

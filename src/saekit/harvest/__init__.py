"""The harvest stage: run a causal LM over text and store activations and loss gradients."""

from saekit.harvest.contexts import Packing, text_contexts
from saekit.harvest.distributed import harvest_shards, parse_shard
from saekit.harvest.harvester import (
    HarvestConfig,
    HarvestPlan,
    HarvestResult,
    harvest,
    plan_harvest,
    run_harvest,
)
from saekit.harvest.sources import TextSource, resolve_source

__all__ = [
    "HarvestConfig",
    "HarvestPlan",
    "HarvestResult",
    "Packing",
    "TextSource",
    "harvest",
    "harvest_shards",
    "parse_shard",
    "plan_harvest",
    "resolve_source",
    "run_harvest",
    "text_contexts",
]

"""The harvest stage: run a causal LM over text and store activations and loss gradients."""

from saekit.harvest.forward import GRADIENT_CONVENTION, BatchOutput, run_batch
from saekit.harvest.harvester import (
    HarvestConfig,
    HarvestPlan,
    HarvestResult,
    harvest,
    plan_harvest,
    run_harvest,
)

__all__ = [
    "GRADIENT_CONVENTION",
    "BatchOutput",
    "HarvestConfig",
    "HarvestPlan",
    "HarvestResult",
    "harvest",
    "plan_harvest",
    "run_batch",
    "run_harvest",
]

"""The KL fine-tune (`sae finetune`): saved SAEs of a run trained further on the spliced
model's KL divergence to the clean model plus their reconstruction loss (Karvonen 2025), on the
store's training contexts or on text, and saved as new SAEs of the run.

A layer of its own, between `recipes | dashboard` (a recipe may fine-tune the SAEs it trained)
and `evaluate` (whose splice of every dictionary shape it trains through).
"""

from saekit.finetune.job import FINETUNES_DIR, state_directory
from saekit.finetune.objective import LOSS
from saekit.finetune.run import FinetuneRequest, FinetuneResult, Observer, finetune

__all__ = [
    "FINETUNES_DIR",
    "LOSS",
    "FinetuneRequest",
    "FinetuneResult",
    "Observer",
    "finetune",
    "state_directory",
]

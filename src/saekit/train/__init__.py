"""`sae train`: SAE variants trained on rows streamed from an activation store.

Evaluation uses `load_sae(directory)`: the saved SAE (raw-activation space) with its `cfg`
(`SAEConfig`); see docs/variants.md for the contract.
"""

from saekit.train.config import TrainSettings, load_config
from saekit.train.export import load_sae
from saekit.train.run import RunResult, TrainRequest, train
from saekit.train.sae import SAE
from saekit.train.sae_config import SAEConfig
from saekit.train.spec import SAESpec, parse_spec
from saekit.train.trainer import Observer
from saekit.train.variants import VARIANTS

__all__ = [
    "SAE",
    "VARIANTS",
    "Observer",
    "RunResult",
    "SAEConfig",
    "SAESpec",
    "TrainRequest",
    "TrainSettings",
    "load_config",
    "load_sae",
    "parse_spec",
    "train",
]

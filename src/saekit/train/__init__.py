"""`sae train`: SAE variants trained on rows streamed from an activation store.

Evaluation uses `load_sae(directory)`: the saved SAE (raw-activation space) with its `cfg`
(`SAEConfig`); see docs/variants.md for the contract.
"""

from saekit.train.checkpoint import run_finished
from saekit.train.config import TrainSettings, load_config
from saekit.train.distributed import TRAIN_RESOURCE
from saekit.train.entry import train
from saekit.train.export import CFG_FILE, load_sae
from saekit.train.formats import export_transcoder_set, is_transcoder_set
from saekit.train.layout import (
    recorded_store,
    run_of,
    sae_directories,
    sae_directory,
    saved_saes,
)
from saekit.train.member import concatenated
from saekit.train.metrics import METRICS_FILE, read_metrics
from saekit.train.run import RunResult, TrainRequest
from saekit.train.sae import SAE, Dictionary
from saekit.train.sae_config import SAEConfig
from saekit.train.schedule import Plan
from saekit.train.shape import Block, Shape
from saekit.train.sparse import Code, DenseCode, SparseCode
from saekit.train.spec import SAESpec, parse_spec
from saekit.train.trainer import Observer
from saekit.train.variants import VARIANTS, modes
from saekit.train.variants.gsae import DEFAULT_BETA_EFF
from saekit.train.variants.options import SHAPE_DEFAULTS
from saekit.train.zipf import fit_zipf

__all__ = [
    "CFG_FILE",
    "DEFAULT_BETA_EFF",
    "METRICS_FILE",
    "SAE",
    "SHAPE_DEFAULTS",
    "TRAIN_RESOURCE",
    "VARIANTS",
    "Block",
    "Code",
    "DenseCode",
    "Dictionary",
    "Observer",
    "Plan",
    "RunResult",
    "SAEConfig",
    "SAESpec",
    "Shape",
    "SparseCode",
    "TrainRequest",
    "TrainSettings",
    "concatenated",
    "export_transcoder_set",
    "fit_zipf",
    "is_transcoder_set",
    "load_config",
    "load_sae",
    "modes",
    "parse_spec",
    "read_metrics",
    "recorded_store",
    "run_finished",
    "run_of",
    "sae_directories",
    "sae_directory",
    "saved_saes",
    "train",
]

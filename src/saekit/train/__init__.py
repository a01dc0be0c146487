"""`sae train`: SAE variants trained on rows streamed from an activation store.

Evaluation uses `load_sae(directory)`: the saved SAE (raw-activation space) with its `cfg`
(`SAEConfig`); see docs/variants.md for the contract.
"""

from saekit.train.checkpoint import run_finished
from saekit.train.config import TrainSettings, load_config
from saekit.train.export import CFG_FILE, load_sae
from saekit.train.formats import export_transcoder_set, is_transcoder_set
from saekit.train.importing import import_sae
from saekit.train.layout import (
    recorded_store,
    run_of,
    sae_directories,
    sae_directory,
    saved_saes,
)
from saekit.train.member import concatenated
from saekit.train.metrics import METRICS_FILE, read_metrics
from saekit.train.run import RunResult, TrainRequest, train
from saekit.train.sae import SAE, Dictionary
from saekit.train.sae_config import SAEConfig
from saekit.train.schedule import Plan
from saekit.train.shape import Block, Shape
from saekit.train.sparse import Code, DenseCode, SparseCode
from saekit.train.spec import SAESpec, parse_spec
from saekit.train.tracking import (
    TRACKING_FILE,
    TrackedRun,
    TrainingTracker,
    track_training,
    tracked_as,
)
from saekit.train.trainer import Observer, Observers
from saekit.train.variants import VARIANTS, described_names, modes
from saekit.train.variants.gsae import DEFAULT_BETA_EFF
from saekit.train.variants.options import SHAPE_DEFAULTS
from saekit.train.zipf import fit_zipf

__all__ = [
    "CFG_FILE",
    "DEFAULT_BETA_EFF",
    "METRICS_FILE",
    "SAE",
    "SHAPE_DEFAULTS",
    "TRACKING_FILE",
    "VARIANTS",
    "Block",
    "Code",
    "DenseCode",
    "Dictionary",
    "Observer",
    "Observers",
    "Plan",
    "RunResult",
    "SAEConfig",
    "SAESpec",
    "Shape",
    "SparseCode",
    "TrackedRun",
    "TrainRequest",
    "TrainSettings",
    "TrainingTracker",
    "concatenated",
    "described_names",
    "export_transcoder_set",
    "fit_zipf",
    "import_sae",
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
    "track_training",
    "tracked_as",
    "train",
]

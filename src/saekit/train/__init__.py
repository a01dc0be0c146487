"""`sae train`: SAE variants trained on rows streamed from an activation store.

Evaluation uses `load_sae(directory)`: the saved SAE (raw-activation space) with its `cfg`
(`SAEConfig`); see docs/variants.md for the contract.
"""

from saekit.train.checkpoint import Checkpoints, run_finished
from saekit.train.config import TrainSettings, load_config
from saekit.train.distributed import TRAIN_RESOURCE
from saekit.train.entry import train
from saekit.train.export import CFG_FILE, load_sae, save_sae, saved_spec
from saekit.train.formats import export_transcoder_set, is_transcoder_set
from saekit.train.importing import import_sae
from saekit.train.layout import (
    recorded_store,
    run_of,
    sae_directories,
    sae_directory,
    saved_saes,
    trained_saes,
)
from saekit.train.losses import LossTerm
from saekit.train.member import Member, concatenated
from saekit.train.metrics import METRICS_FILE, MetricsLog, read_metrics
from saekit.train.run import RunResult, TrainRequest, differing_keys
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
from saekit.train.trainer import Observer, Observers, Throughput, checkpoint_due
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
    "TRAIN_RESOURCE",
    "VARIANTS",
    "Block",
    "Checkpoints",
    "Code",
    "DenseCode",
    "Dictionary",
    "LossTerm",
    "Member",
    "MetricsLog",
    "Observer",
    "Observers",
    "Plan",
    "RunResult",
    "SAEConfig",
    "SAESpec",
    "Shape",
    "SparseCode",
    "Throughput",
    "TrackedRun",
    "TrainRequest",
    "TrainSettings",
    "TrainingTracker",
    "checkpoint_due",
    "concatenated",
    "described_names",
    "differing_keys",
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
    "save_sae",
    "saved_saes",
    "saved_spec",
    "track_training",
    "tracked_as",
    "train",
    "trained_saes",
]

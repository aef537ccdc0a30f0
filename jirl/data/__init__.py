"""jirl.data: synthetic and iHarmony4 composites as TFDS datasets, own folders, the input pipeline.

Importing this package registers the TFDS builders ``jirl_synthetic`` and ``ihd`` (iHarmony4,
manual download).
"""

from jirl.data.features import composite_features
from jirl.data.folder import FolderSource, folder_source
from jirl.data.ihd import IHarmony4, IHDConfig, ihd_builder
from jirl.data.pipeline import (
    VALID_SOURCES,
    default_data_config,
    eval_batches,
    load_source,
    num_eval_batches,
    resolve_data_dir,
    steps_per_epoch,
    train_batches,
)
from jirl.data.tfds_synthetic import SyntheticComposites, SyntheticConfig, synthetic_builder

__all__ = [
    "VALID_SOURCES",
    "FolderSource",
    "IHDConfig",
    "IHarmony4",
    "SyntheticComposites",
    "SyntheticConfig",
    "composite_features",
    "default_data_config",
    "eval_batches",
    "folder_source",
    "ihd_builder",
    "load_source",
    "num_eval_batches",
    "resolve_data_dir",
    "steps_per_epoch",
    "synthetic_builder",
    "train_batches",
]

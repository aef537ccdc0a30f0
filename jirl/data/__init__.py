"""jirl.data: synthetic (and later iHarmony4) composites as TFDS datasets, and the input pipeline.

Importing this package registers the TFDS builder ``jirl_synthetic``.
"""

from jirl.data.features import composite_features
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
    "SyntheticComposites",
    "SyntheticConfig",
    "composite_features",
    "default_data_config",
    "eval_batches",
    "load_source",
    "num_eval_batches",
    "resolve_data_dir",
    "steps_per_epoch",
    "synthetic_builder",
    "train_batches",
]

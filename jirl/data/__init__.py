"""jirl.data: synthetic and iHarmony4 composites as TFDS datasets, own folders, the input pipeline.

Importing this package registers the TFDS builders ``jirl_synthetic`` and ``ihd`` (iHarmony4,
manual download). Splits are "train", "val" (carved from train, see ``jirl.data.splits``) and
"test"; image files are read by ``jirl.data.images``.
"""

from jirl.data.features import composite_features
from jirl.data.folder import FolderSource, folder_source
from jirl.data.ihd import IHarmony4, IHDConfig, ihd_builder
from jirl.data.images import BadImageError, LoadedImage, load_mask, load_rgb
from jirl.data.pipeline import eval_batches, num_eval_batches, steps_per_epoch, train_batches
from jirl.data.schema import SPLITS, VALID_SOURCES, resolve_data_dir, validate_data_config
from jirl.data.sources import load_source, missing_real_images
from jirl.data.splits import IndexView, ValidationSplit, carve_validation
from jirl.data.tfds_synthetic import SyntheticComposites, SyntheticConfig, synthetic_builder

__all__ = [
    "SPLITS",
    "VALID_SOURCES",
    "BadImageError",
    "FolderSource",
    "IHDConfig",
    "IHarmony4",
    "IndexView",
    "LoadedImage",
    "SyntheticComposites",
    "SyntheticConfig",
    "ValidationSplit",
    "carve_validation",
    "composite_features",
    "eval_batches",
    "folder_source",
    "ihd_builder",
    "load_mask",
    "load_rgb",
    "load_source",
    "missing_real_images",
    "num_eval_batches",
    "resolve_data_dir",
    "steps_per_epoch",
    "synthetic_builder",
    "train_batches",
    "validate_data_config",
]

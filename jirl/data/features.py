"""The TFDS feature dictionary shared by every composite-image builder (synthetic, iHarmony4)."""

from __future__ import annotations

import sys

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from jirl.data.images import IMAGE_FORMATS, encode_image

__all__ = ["IMAGE_FORMATS", "ArrayRecordBuilder", "composite_features", "encode_image"]


def composite_features(image_format: str = "png") -> tfds.features.FeaturesDict:
    """Features of one composite example.

    ``composite``/``real``: uint8 [H, W, 3] (``image_format`` png or jpeg); ``mask``: uint8
    [H, W, 1] png with values 0 (background) / 255 (inharmonious foreground); ``subset``: e.g.
    "HCOCO" or "synthetic"; ``name``: the composite file name; ``mask_fraction``: foreground share.
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    return tfds.features.FeaturesDict(
        {
            "composite": tfds.features.Image(shape=(None, None, 3), encoding_format=image_format),
            "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "real": tfds.features.Image(shape=(None, None, 3), encoding_format=image_format),
            "subset": tfds.features.Text(),
            "name": tfds.features.Text(),
            "mask_fraction": tfds.features.Scalar(dtype=np.float32),
        }
    )


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of jirl's TFDS builders: prepared and read without TensorFlow.

    Writes ArrayRecord by default (TFRecord writing needs TensorFlow) and resolves `code_path`
    from the subclass's module file (TFDS's own lookup needs the `importlib_resources` backport
    for editable installs).
    """

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(sys.modules[cls.__module__].__file__)

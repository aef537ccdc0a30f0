"""The models' input units: pixels in [0, 1] normalized per channel by a mean and a std
(`config.data.mean` / `std`; ImageNet's for the localizers, 0.5 / 0.5 for RainNet's [-1, 1])."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def denormalize(x: Any, mean: Sequence[float], std: Sequence[float], dtype: Any = np.float32) -> Any:
    """Model-input units back to [0, 1] pixels, `x * std + mean` per channel, in `dtype` (a numpy
    or a jax array in, the same kind out)."""
    return x.astype(dtype) * np.asarray(std, dtype) + np.asarray(mean, dtype)

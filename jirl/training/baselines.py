"""Trivial baselines scored beside every model, so that nobody mistakes a prior for learning.

- ``baseline/mean_mask``: the mean of the training split's masks (resized to the model's input
  as evaluation resizes them), the same prediction for every image. It is what a model that
  learned only *where* inharmonious regions tend to be would output; it is scored with the
  protocol of the model (``config.eval.normalize``).
- ``baseline/all_foreground``: every pixel predicted inharmonious. Scored on the raw constant
  map (per-image min-max normalization would turn a constant map into zeros): its AP and IoU are
  the region's area fraction, its F1 ``2 f / (1 + f)``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jirl import data as jdata
from jirl import metrics
from jirl.data import transforms

MEAN_MASK = "baseline/mean_mask"
ALL_FOREGROUND = "baseline/all_foreground"
NAMES = (MEAN_MASK, ALL_FOREGROUND)


@dataclasses.dataclass(frozen=True)
class Baselines:
    """The mean training mask [S, S, 1] and where it came from."""

    mean_mask: np.ndarray
    examples: int

    def summary(self) -> dict[str, float | int]:
        """Centre and corner values of the mean mask (a location prior shows as centre >> corners)."""
        m = self.mean_mask[..., 0]
        k = max(1, m.shape[0] // 8)
        c0, c1 = (m.shape[0] - k) // 2, (m.shape[1] - k) // 2
        corners = [m[:k, :k], m[:k, -k:], m[-k:, :k], m[-k:, -k:]]
        return {"examples": self.examples, "centre": float(m[c0:c0 + k, c1:c1 + k].mean()),
                "corners": float(np.mean([c.mean() for c in corners]))}


def _spread(n: int, count: int) -> np.ndarray:
    """``count`` indices spread evenly over ``range(n)`` (all of them when count < 0 or >= n)."""
    if count < 0 or count >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))


def mean_training_mask(data_cfg: ml_collections.ConfigDict, max_examples: int = -1) -> Baselines:
    """The mean of up to ``max_examples`` training masks (evenly spread over the split).

    Masks are resized to ``data.crop_size`` exactly as evaluation resizes them. With several
    processes each reads a share and the sums are combined, so all get the same mean.
    """
    source = jdata.load_source(data_cfg, "train")
    indices = _spread(len(source), max_examples)
    size = int(data_cfg.crop_size)
    total = np.zeros((size, size, 1), np.float64)
    for i in indices[jax.process_index()::jax.process_count()]:
        total += transforms.resize_mask(source[int(i)]["mask"], size, size)
    if jax.process_count() > 1:
        total = np.asarray(multihost_utils.process_allgather(total)).sum(0)
    return Baselines((total / len(indices)).astype(np.float32), len(indices))


@functools.partial(jax.jit, static_argnames="normalize")
def _score(mean_mask: jax.Array, target: jax.Array, valid: jax.Array,
           normalize: bool) -> dict[str, dict[str, jax.Array]]:
    prior = jnp.broadcast_to(mean_mask, target.shape)
    return {
        MEAN_MASK: metrics.per_image_metrics(prior, target, normalize=normalize, valid=valid),
        ALL_FOREGROUND: metrics.per_image_metrics(
            jnp.ones_like(target), target, normalize=False, normalize_target=normalize,
            valid=valid),
    }


def score(baselines: Baselines, target: np.ndarray, valid: np.ndarray,
          normalize: bool) -> dict[str, dict[str, np.ndarray]]:
    """Per-image {"ap", "f1", "iou"} of both baselines against a (process-local) batch of masks."""
    out = _score(jnp.asarray(baselines.mean_mask), jnp.asarray(target, jnp.float32),
                 jnp.asarray(valid, bool), normalize)
    return {name: {k: np.asarray(v) for k, v in out[name].items()} for name in NAMES}

"""Evaluation metrics of the official DIRL protocol (evaluation/metrics.py, dirl_test.py).

Per image: the prediction (and, as dirl_test.py does, the label) is min-max normalized by
``normPRED``; F1 is ``FScore`` at threshold 0.5, IoU is ``compute_IoU`` at 0.5, AP is
``sklearn.metrics.average_precision_score`` on the flattened image. Dataset numbers are means of
per-image values. All array functions are pure NHWC jnp code (jit/vmap/pmap-able); per-image
values can be summed on device (``MetricSums``) and grouped per sub-dataset on the host
(``StreamingMetrics``).
"""

from __future__ import annotations

from collections.abc import Mapping

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

METRIC_NAMES: tuple[str, ...] = ("ap", "f1", "iou")


def _image_axes(x: jax.Array) -> tuple[int, ...]:
    """All axes but the leading batch axis."""
    return tuple(range(1, x.ndim))


def norm_pred(pred: jax.Array, eps: float = 1e-2) -> jax.Array:
    """Per-image official ``normPRED``: d - min, divided by max - min when that is >= eps."""
    pred = jnp.asarray(pred, jnp.float32)
    axes = _image_axes(pred)
    ma = jnp.max(pred, axis=axes, keepdims=True)
    mi = jnp.min(pred, axis=axes, keepdims=True)
    rng = ma - mi
    shifted = pred - mi
    return jnp.where(rng < eps, shifted, shifted / jnp.where(rng < eps, 1.0, rng))


def _average_precision_1d(score: jax.Array, positive: jax.Array) -> jax.Array:
    """sklearn ``average_precision_score`` of one flattened image (step-wise PR integral)."""
    n = score.shape[0]
    # Ascending sort by score, labels carried along (ties stay grouped by exact score value).
    s, y = lax.sort((score, positive.astype(jnp.int32)), num_keys=1)
    idx = jnp.arange(n, dtype=jnp.int32)
    group_start = jnp.concatenate([jnp.ones((1,), bool), s[1:] != s[:-1]])
    start = lax.cummax(jnp.where(group_start, idx, 0))  # first index of each element's tie group
    tp_suffix = jnp.cumsum(y[::-1])[::-1]  # positives with index >= k
    n_pos = tp_suffix[0]
    # Precision at threshold s_i: positives with score >= s_i over all with score >= s_i.
    precision = tp_suffix[start].astype(jnp.float32) / (n - start).astype(jnp.float32)
    # sum_n (R_n - R_{n-1}) P_n == mean of the precision at each positive's own threshold.
    ap = jnp.sum(jnp.where(y > 0, precision, 0.0)) / jnp.maximum(n_pos, 1).astype(jnp.float32)
    # No positive label: sklearn warns, sets recall to 1 for all thresholds and returns 0.0.
    return jnp.where(n_pos > 0, ap, 0.0)


def average_precision(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Per-image ``sklearn.metrics.average_precision_score(target.ravel(), pred.ravel())`` -> [B].

    Positives are ``target > 0.5`` (sklearn only accepts binary labels). Ties are grouped by
    exact score value. Images with no positive pixel give 0.0 (sklearn 1.9 warns and returns
    0.0); images that are all positive give 1.0. Computed in float32 (sklearn uses float64), so
    values agree with sklearn to ~1e-6.
    """
    chex.assert_equal_shape((pred, target))
    b = pred.shape[0]
    score = jnp.asarray(pred, jnp.float32).reshape(b, -1)
    positive = jnp.asarray(target).reshape(b, -1) > 0.5
    return jax.vmap(_average_precision_1d)(score, positive)


def f1_score(
    pred: jax.Array,
    target: jax.Array,
    threshold: float = 0.5,
    beta2: float = 1.0,
    eps: float = 1e-6,
) -> jax.Array:
    """Per-image F-beta of official ``FScore``: P = TP/(#pred+eps), R = TP/(#gt+eps) -> [B].

    Both prediction and label are binarized at ``threshold``;
    F = (1 + beta2) P R / (beta2 P + R + eps). An image with no predicted and no true positive
    pixel scores 0.
    """
    chex.assert_equal_shape((pred, target))
    pred = jnp.asarray(pred, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    axes = _image_axes(pred)
    p = (pred > threshold).astype(jnp.float32)
    g = (target > threshold).astype(jnp.float32)
    tp = jnp.sum(p * g, axis=axes)
    precision = tp / (jnp.sum(p, axis=axes) + eps)
    recall = tp / (jnp.sum(g, axis=axes) + eps)
    return (1.0 + beta2) * precision * recall / (beta2 * precision + recall + eps)


def iou_score(
    pred: jax.Array, target: jax.Array, threshold: float = 0.5, eps: float = 1e-6
) -> jax.Array:
    """Per-image IoU of official ``compute_IoU``: (pred > thr) vs raw label, I / (U + eps) -> [B].

    As in the official code only the prediction is binarized; the label enters as is (binary
    labels expected). Empty prediction and empty label give 0.
    """
    chex.assert_equal_shape((pred, target))
    pred = jnp.asarray(pred, jnp.float32)
    gt = jnp.asarray(target, jnp.float32)
    axes = _image_axes(pred)
    p = (pred > threshold).astype(jnp.float32)
    inter = jnp.sum(p * gt, axis=axes)
    union = jnp.sum(p, axis=axes) + jnp.sum(gt, axis=axes) - inter
    return inter / (union + eps)


def per_image_metrics(
    pred: jax.Array,
    target: jax.Array,
    *,
    normalize: bool = True,
    normalize_target: bool | None = None,
    valid: jax.Array | None = None,
    threshold: float = 0.5,
) -> dict[str, jax.Array]:
    """Per-image ``{"ap", "f1", "iou"}`` arrays [B] of the official protocol (dirl_test.py).

    ``normalize`` applies ``norm_pred`` to the prediction (official); ``normalize_target``
    (default: same as ``normalize``) applies it to the label too, as dirl_test.py does. That is
    the identity on binary masks with both classes, but maps a constant all-one mask to all-zero.
    Rows with ``valid == False`` (padding) are set to 0; pass the same ``valid`` to
    ``MetricSums.from_batch`` / ``StreamingMetrics.update`` so they are not counted.
    """
    chex.assert_equal_shape((pred, target))
    if normalize_target is None:
        normalize_target = normalize
    pred = jnp.asarray(pred, jnp.float32)
    target = jnp.asarray(target, jnp.float32)
    if normalize:
        pred = norm_pred(pred)
    if normalize_target:
        target = norm_pred(target)
    out = {
        "ap": average_precision(pred, target),
        "f1": f1_score(pred, target, threshold=threshold),
        "iou": iou_score(pred, target, threshold=threshold),
    }
    if valid is not None:
        valid = jnp.asarray(valid, bool)
        chex.assert_shape(valid, (pred.shape[0],))
        out = {k: jnp.where(valid, v, 0.0) for k, v in out.items()}
    return out


@flax.struct.dataclass
class MetricSums:
    """Device-side sums of per-image metrics and the image count (a pytree; psum-able)."""

    sums: dict[str, jax.Array]
    count: jax.Array

    @classmethod
    def zeros(cls, names: tuple[str, ...] = METRIC_NAMES) -> MetricSums:
        """Empty accumulator for the given metric names."""
        return cls(
            sums={k: jnp.zeros((), jnp.float32) for k in names}, count=jnp.zeros((), jnp.float32)
        )

    @classmethod
    def from_batch(
        cls, per_image: Mapping[str, jax.Array], valid: jax.Array | None = None
    ) -> MetricSums:
        """Batch sums of per-image values, skipping rows where ``valid`` is False (jit-able)."""
        first = next(iter(per_image.values()))
        if valid is None:
            valid = jnp.ones(first.shape[:1], bool)
        valid = jnp.asarray(valid, bool)
        sums = {
            k: jnp.sum(jnp.where(valid, jnp.asarray(v, jnp.float32), 0.0))
            for k, v in per_image.items()
        }
        return cls(sums=sums, count=jnp.sum(valid.astype(jnp.float32)))

    def merge(self, other: MetricSums) -> MetricSums:
        """Elementwise sum of two accumulators with the same metric names."""
        return jax.tree_util.tree_map(jnp.add, self, other)

    def psum(self, axis_name: str) -> MetricSums:
        """All-reduce across a named mapped axis (inside pmap / shard_map)."""
        return jax.tree_util.tree_map(lambda x: lax.psum(x, axis_name), self)

    def compute(self) -> dict[str, float]:
        """Host-side means over all counted images (NaN when nothing was counted)."""
        count = float(np.asarray(self.count))
        return {
            k: (float(np.asarray(v)) / count if count > 0 else float("nan"))
            for k, v in self.sums.items()
        }


class StreamingMetrics:
    """Host accumulator of per-image metrics, overall and per sub-dataset (float64 sums)."""

    ALL = "all"

    def __init__(self) -> None:
        """Start empty."""
        self._sums: dict[str, dict[str, float]] = {}
        self._counts: dict[str, int] = {}

    def update(
        self,
        per_image: Mapping[str, jax.Array | np.ndarray],
        subsets: np.ndarray | list[str] | None = None,
        valid: jax.Array | np.ndarray | None = None,
    ) -> None:
        """Add one batch: per-image metric arrays [B], sub-dataset names [B], validity mask [B]."""
        values = {k: np.asarray(v, np.float64).reshape(-1) for k, v in per_image.items()}
        b = next(iter(values.values())).shape[0]
        if any(v.shape[0] != b for v in values.values()):
            raise ValueError(
                "StreamingMetrics.update: per-image arrays differ in length "
                f"{ {k: v.shape[0] for k, v in values.items()} }; pass one value per image."
            )
        keep = np.ones(b, bool) if valid is None else np.asarray(valid, bool).reshape(-1)
        if keep.shape[0] != b:
            raise ValueError(
                f"StreamingMetrics.update: valid has {keep.shape[0]} entries for {b} images."
            )
        groups = [self.ALL]
        names = None
        if subsets is not None:
            names = np.asarray(subsets).reshape(-1).astype(str)
            if names.shape[0] != b:
                raise ValueError(
                    f"StreamingMetrics.update: subsets has {names.shape[0]} entries for {b} images."
                )
            if self.ALL in names:
                raise ValueError(
                    f"StreamingMetrics.update: sub-dataset name {self.ALL!r} is reserved for the "
                    "overall row; rename that subset."
                )
            groups += sorted(set(names[keep].tolist()))
        for g in groups:
            sel = keep if g == self.ALL else keep & (names == g)
            n = int(sel.sum())
            if n == 0 and g in self._counts:
                continue
            sums = self._sums.setdefault(g, {})
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v[sel].sum())
            self._counts[g] = self._counts.get(g, 0) + n

    def result(self) -> dict[str, dict[str, float]]:
        """Means per group: ``{"all": {"ap", "f1", "iou", "count"}, "<subset>": {...}}``."""
        out: dict[str, dict[str, float]] = {}
        for g in [self.ALL] + sorted(k for k in self._sums if k != self.ALL):
            if g not in self._sums:
                continue
            n = self._counts[g]
            row = {k: (s / n if n else float("nan")) for k, s in self._sums[g].items()}
            row["count"] = n
            out[g] = row
        return out

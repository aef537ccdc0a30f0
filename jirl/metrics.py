"""Evaluation metrics: localization (official DIRL protocol) and harmonization (RainNet's).

Localization, as DIRL's evaluation/metrics.py and dirl_test.py compute it:

Per image: the prediction (and, as dirl_test.py does, the label) is min-max normalized by
``normPRED``; F1 is ``FScore`` at threshold 0.5, IoU is ``compute_IoU`` at 0.5, AP is
``sklearn.metrics.average_precision_score`` on the flattened image. Dataset numbers are means of
per-image values. All array functions are pure NHWC jnp code (jit/vmap/pmap-able); per-image
values can be summed on device (``MetricSums``) and grouped per sub-dataset on the host
(``StreamingMetrics``).

Harmonization (``harmonization_metrics``), as junleen/RainNet's evaluate.py computes it: both
images go through ``tensor2im`` ((x + 1) / 2 * 255, truncated to uint8), then skimage's
``mean_squared_error`` and ``peak_signal_noise_ratio`` (data range 255) per image; fMSE, which
the paper reports and the code never computes, is the MSE over the foreground pixels only (the
iHarmony4 / DoveNet definition). Dataset numbers are means of per-image values, overall, per
sub-dataset and per foreground-ratio bin (``FG_RATIO_BINS``).
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
HARMONIZATION_METRIC_NAMES: tuple[str, ...] = ("mse", "psnr", "fmse")
# How tables and charts title each metric (and a harmonizer's foreground ratio).
TITLES: dict[str, str] = {"ap": "AP", "f1": "F1", "iou": "IoU", "mse": "MSE", "psnr": "PSNR",
                          "fmse": "fMSE", "fg_ratio": "fg ratio"}
# Foreground-ratio bins of the harmonization results (lower bound inclusive; the last includes 1).
FG_RATIO_BINS: tuple[tuple[float, str], ...] = ((0.0, "fg 0-5%"), (0.05, "fg 5-15%"),
                                                (0.15, "fg 15-100%"))
# The smallest MSE a PSNR is computed from: skimage gives inf for a perfect image, which would make
# every mean inf (and eval.json invalid JSON); floored, a perfect image scores 148.1 dB.
MIN_MSE = 1e-10


def _image_axes(x: jax.Array) -> tuple[int, ...]:
    """All axes but the leading batch axis."""
    return tuple(range(1, x.ndim))


def norm_pred(pred: jax.Array, eps: float = 1e-2) -> jax.Array:
    """Per-image official ``normPRED``: d - min, divided by max - min when that is >= eps.
    A numpy array is normalized in numpy (inference on photos of many sizes compiles nothing)."""
    xp = np if isinstance(pred, np.ndarray) else jnp
    pred = xp.asarray(pred, xp.float32)
    axes = _image_axes(pred)
    ma = xp.max(pred, axis=axes, keepdims=True)
    mi = xp.min(pred, axis=axes, keepdims=True)
    rng = ma - mi
    shifted = pred - mi
    return xp.where(rng < eps, shifted, shifted / xp.where(rng < eps, 1.0, rng))


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


def to_pixels(image: jax.Array, quantize: bool = True) -> jax.Array:
    """[0, 1] images -> float32 pixel values in [0, 255]; `quantize` truncates them to integers
    as the official ``tensor2im``'s ``astype(np.uint8)`` does (values are clipped first)."""
    pixels = jnp.clip(jnp.asarray(image, jnp.float32) * 255.0, 0.0, 255.0)
    return jnp.floor(pixels) if quantize else pixels


def harmonization_metrics(
    pred: jax.Array,
    target: jax.Array,
    mask: jax.Array,
    *,
    quantize: bool = True,
    valid: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Per-image ``{"mse", "psnr", "fmse", "fg_ratio"}`` arrays [B] of a harmonized image.

    `pred`, `target`: [B, H, W, 3] in [0, 1] (`quantize`: first truncated to 8-bit values, the
    official default); `mask`: [B, H, W, 1] foreground in {0, 1}. MSE is the mean over pixels and
    channels on the 0-255 scale, PSNR = 10 log10(255^2 / max(MSE, MIN_MSE)), fMSE the mean over
    the foreground's pixels and channels (0 for an empty foreground), fg_ratio the mask's mean.
    Rows with ``valid == False`` are set to 0.
    """
    chex.assert_equal_shape((pred, target))
    chex.assert_rank(mask, 4)
    chex.assert_equal_shape_prefix((pred, mask), 3)
    sq = jnp.square(to_pixels(pred, quantize) - to_pixels(target, quantize))
    m = (jnp.asarray(mask, jnp.float32) > 0.5).astype(jnp.float32)
    mse = jnp.mean(sq, axis=(1, 2, 3))
    area = jnp.sum(m, axis=(1, 2, 3))
    fmse = jnp.sum(sq * m, axis=(1, 2, 3)) / jnp.maximum(area * sq.shape[-1], 1.0)
    out = {"mse": mse, "psnr": 10.0 * jnp.log10(255.0 ** 2 / jnp.maximum(mse, MIN_MSE)),
           "fmse": fmse, "fg_ratio": area / (m.shape[1] * m.shape[2])}
    if valid is not None:
        valid = jnp.asarray(valid, bool)
        chex.assert_shape(valid, (pred.shape[0],))
        out = {k: jnp.where(valid, v, 0.0) for k, v in out.items()}
    return out


def fg_ratio_bin(fg_ratio: np.ndarray) -> np.ndarray:
    """The `FG_RATIO_BINS` label of each foreground ratio (a fraction in [0, 1])."""
    edges = np.asarray([lower for lower, _ in FG_RATIO_BINS[1:]])
    labels = np.asarray([label for _, label in FG_RATIO_BINS])
    return labels[np.searchsorted(edges, np.asarray(fg_ratio, np.float64), side="right")]


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


def group_order(groups) -> list[str]:
    """"all", then sub-dataset names sorted, then the `FG_RATIO_BINS` labels in bin order."""
    bins = [label for _, label in FG_RATIO_BINS]
    rest = sorted(g for g in groups if g != StreamingMetrics.ALL and g not in bins)
    return ([StreamingMetrics.ALL] if StreamingMetrics.ALL in groups else []) + rest + [
        b for b in bins if b in groups]


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
        bins: np.ndarray | list[str] | None = None,
    ) -> None:
        """Add one batch: per-image metric arrays [B], sub-dataset names [B], validity mask [B],
        and optionally a second grouping [B] (`bins`, e.g. `fg_ratio_bin` labels): each image
        counts in "all", in its sub-dataset's row and in its bin's row."""
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
        selections = {self.ALL: keep}
        for what, labels in (("subsets", subsets), ("bins", bins)):
            if labels is None:
                continue
            names = np.asarray(labels).reshape(-1).astype(str)
            if names.shape[0] != b:
                raise ValueError(
                    f"StreamingMetrics.update: {what} has {names.shape[0]} entries for {b} images."
                )
            if self.ALL in names:
                raise ValueError(
                    f"StreamingMetrics.update: group name {self.ALL!r} is reserved for the "
                    "overall row; rename that subset."
                )
            for g in sorted(set(names[keep].tolist())):
                if g in selections:
                    raise ValueError(f"StreamingMetrics.update: {g!r} is both a sub-dataset and "
                                     "a bin name")
                selections[g] = keep & (names == g)
        for g, sel in selections.items():
            n = int(sel.sum())
            if n == 0 and g in self._counts:
                continue
            sums = self._sums.setdefault(g, {})
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v[sel].sum())
            self._counts[g] = self._counts.get(g, 0) + n

    def result(self) -> dict[str, dict[str, float]]:
        """Means per group: ``{"all": {"ap", "f1", "iou", "count"}, "<subset>": {...}}``; "all"
        first, then the sub-datasets by name, then the bins (`FG_RATIO_BINS` in their order)."""
        out: dict[str, dict[str, float]] = {}
        for g in group_order(self._sums):
            n = self._counts[g]
            row = {k: (s / n if n else float("nan")) for k, s in self._sums[g].items()}
            row["count"] = n
            out[g] = row
        return out

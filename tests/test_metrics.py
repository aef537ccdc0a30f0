"""Tests for jirl.metrics against sklearn and NumPy transcriptions of the official protocol."""

from __future__ import annotations

import functools
import warnings

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from sklearn.metrics import average_precision_score

from jirl import metrics

# ----------------------------------------------------------------------------------------------
# NumPy transcriptions of evaluation/metrics.py (per image, batch size 1 as in dirl_test.py)
# ----------------------------------------------------------------------------------------------


def np_norm_pred(d: np.ndarray, eps: float = 1e-2) -> np.ndarray:
    """Official normPRED on one image."""
    ma, mi = d.max(), d.min()
    return d - mi if ma - mi < eps else (d - mi) / (ma - mi)


def np_fscore(pred: np.ndarray, gt: np.ndarray, beta2=1.0, threshold=0.5, eps=1e-6) -> float:
    """Official FScore on one image (float32 like the torch path)."""
    p = np.where(pred > threshold, 1.0, 0.0).astype(np.float32)
    g = np.where(gt > threshold, 1.0, 0.0).astype(np.float32)
    tp = (p * g).sum()
    precision = tp / (p.sum() + np.float32(eps))
    recall = tp / (g.sum() + np.float32(eps))
    return float(
        (1 + beta2) * (precision * recall) / (beta2 * precision + recall + np.float32(eps))
    )


def np_iou(pred: np.ndarray, gt: np.ndarray, threshold=0.5, eps=1e-6) -> float:
    """Official compute_IoU on one image (label not binarized)."""
    p = np.where(pred > threshold, 1.0, 0.0)
    inter = (p * gt).sum()
    union = p.sum() + gt.sum() - inter
    return float(inter / (union + eps))


def sk_ap(pred: np.ndarray, gt: np.ndarray) -> float:
    """sklearn AP of one flattened image, its no-positive warning silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(average_precision_score(gt.ravel(), pred.ravel()))


def official_per_image(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """dirl_test.py loop: normPRED both, then FScore, compute_mAP, compute_IoU per image."""
    out = {"ap": [], "f1": [], "iou": []}
    for p, g in zip(pred, gt, strict=True):
        p, g = np_norm_pred(p), np_norm_pred(g)
        out["ap"].append(sk_ap(p, g))
        out["f1"].append(np_fscore(p, g))
        out["iou"].append(np_iou(p, g))
    return {k: np.asarray(v) for k, v in out.items()}


# ----------------------------------------------------------------------------------------------
# Random masks with ties, constant predictions, empty and full targets
# ----------------------------------------------------------------------------------------------

PRED_KINDS = ("uniform", "quantized", "constant", "sigmoid", "near_constant")
TARGET_KINDS = ("random", "zeros", "ones", "blob")


def make_pred(rng: np.random.Generator, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    if kind == "uniform":
        x = rng.random(shape)
    elif kind == "quantized":  # many tied scores
        x = rng.integers(0, 5, shape) / 4.0
    elif kind == "constant":
        x = np.full(shape, rng.random())
    elif kind == "sigmoid":
        x = 1.0 / (1.0 + np.exp(-4.0 * rng.standard_normal(shape)))
    else:  # range below normPRED's eps
        x = 0.4 + 0.005 * rng.random(shape)
    return x.astype(np.float32)


def make_target(rng: np.random.Generator, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    if kind == "zeros":
        return np.zeros(shape, np.float32)
    if kind == "ones":
        return np.ones(shape, np.float32)
    if kind == "blob":
        h, w = shape[:2]
        t = np.zeros(shape, np.float32)
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        t[y0 : y0 + h // 2 + 1, x0 : x0 + w // 2 + 1] = 1.0
        return t
    return (rng.random(shape) < rng.uniform(0.05, 0.95)).astype(np.float32)


# Few distinct shapes (4-16 px, odd and even) so that jit compiles stay cached across examples.
HEIGHTS = (4, 11, 16)
WIDTHS = (5, 16)
BATCH = 3


@st.composite
def batches(draw) -> tuple[np.ndarray, np.ndarray]:
    """A batch [3, H, W, 1] of (prediction, binary target) pairs, each image of a random kind."""
    b = BATCH
    h = draw(st.sampled_from(HEIGHTS))
    w = draw(st.sampled_from(WIDTHS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    preds, targets = [], []
    for _ in range(b):
        preds.append(make_pred(rng, draw(st.sampled_from(PRED_KINDS)), (h, w, 1)))
        targets.append(make_target(rng, draw(st.sampled_from(TARGET_KINDS)), (h, w, 1)))
    return np.stack(preds), np.stack(targets)


ap_jit = jax.jit(metrics.average_precision)
norm_jit = jax.jit(metrics.norm_pred)
f1_jit = jax.jit(metrics.f1_score)
iou_jit = jax.jit(metrics.iou_score)
per_image_jit = jax.jit(metrics.per_image_metrics)

FAST = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


# ----------------------------------------------------------------------------------------------
# Average precision
# ----------------------------------------------------------------------------------------------


@FAST
@given(batches())
def test_average_precision_matches_sklearn(batch):
    pred, target = batch
    got = np.asarray(ap_jit(pred, target))
    want = np.array([sk_ap(p, t) for p, t in zip(pred, target, strict=True)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_sklearn_no_positive_behaviour_is_matched():
    pred = np.random.default_rng(0).random((2, 6, 6, 1)).astype(np.float32)
    target = np.zeros_like(pred)
    with pytest.warns(UserWarning, match="No positive class"):
        ref = average_precision_score(target[0].ravel(), pred[0].ravel())
    assert ref == 0.0 and not np.signbit(ref)  # installed sklearn: warns, returns +0.0
    got = np.asarray(metrics.average_precision(pred, target))
    np.testing.assert_array_equal(got, [0.0, 0.0])
    assert not np.any(np.signbit(got))


def test_average_precision_all_positive_is_one():
    pred = np.random.default_rng(1).random((2, 5, 7, 1)).astype(np.float32)
    got = metrics.average_precision(pred, np.ones_like(pred))
    np.testing.assert_allclose(got, [1.0, 1.0])
    assert average_precision_score(np.ones(35), pred[0].ravel()) == 1.0


def test_average_precision_hand_example_with_ties():
    # y = [0, 1, 0, 1], scores .5 .5 .2 .5: one tie group {0,1,3} (P = 2/3, R = 1) -> AP = 2/3.
    pred = np.array([0.5, 0.5, 0.2, 0.5], np.float32).reshape(1, 2, 2, 1)
    target = np.array([0, 1, 0, 1], np.float32).reshape(1, 2, 2, 1)
    np.testing.assert_allclose(metrics.average_precision(pred, target), [2.0 / 3.0], rtol=1e-6)


class AveragePrecisionJitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_agrees_with_sklearn_at_64px(self):
        rng = np.random.default_rng(2)
        pred = make_pred(rng, "sigmoid", (3, 64, 64, 1))
        pred[1] = np.round(pred[1] * 8) / 8  # ties
        target = np.stack([make_target(rng, k, (64, 64, 1)) for k in ("blob", "random", "zeros")])
        got = self.variant(metrics.average_precision)(pred, target)
        want = [sk_ap(p, t) for p, t in zip(pred, target, strict=True)]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# normPRED, F1, IoU
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("xp", [np, jnp], ids=["numpy", "jax"])
def test_norm_pred_branches(xp):
    wide = np.linspace(0.2, 0.8, 16, dtype=np.float32).reshape(4, 4, 1)
    narrow = (0.3 + np.linspace(0.0, 0.005, 16, dtype=np.float32)).reshape(4, 4, 1)
    const = np.full((4, 4, 1), 0.7, np.float32)
    normed = metrics.norm_pred(xp.asarray(np.stack([wide, narrow, const])))
    assert isinstance(normed, np.ndarray) == (xp is np)  # numpy in, numpy out: nothing compiled
    got = np.asarray(normed)
    np.testing.assert_allclose(got[0], (wide - 0.2) / 0.6, rtol=1e-5, atol=1e-6)  # scaled
    np.testing.assert_allclose(got[1], narrow - 0.3, atol=1e-7)  # range < eps: only shifted
    np.testing.assert_array_equal(got[2], 0.0)  # constant: zero, no NaN
    assert got[0].min() == 0.0 and np.isclose(got[0].max(), 1.0)
    np.testing.assert_allclose(got[1].max(), narrow.max() - narrow.min())
    # The eps threshold itself: range exactly 1e-2 is >= eps, so it is scaled.
    edge = xp.asarray(np.array([0.0, 0.25], np.float32).reshape(1, 1, 2, 1))
    np.testing.assert_allclose(metrics.norm_pred(edge, eps=0.25), [[[[0.0], [1.0]]]])


@FAST
@given(batches())
def test_norm_pred_f1_iou_match_official(batch):
    pred, target = batch
    normed = np.asarray(norm_jit(pred))
    for i in range(pred.shape[0]):
        np.testing.assert_allclose(normed[i], np_norm_pred(pred[i]), rtol=1e-6, atol=1e-7)
    f1 = np.asarray(f1_jit(normed, target))
    iou = np.asarray(iou_jit(normed, target))
    for i in range(pred.shape[0]):
        np.testing.assert_allclose(f1[i], np_fscore(normed[i], target[i]), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(iou[i], np_iou(normed[i], target[i]), rtol=1e-5, atol=1e-7)


def test_f1_iou_edge_cases():
    z = np.zeros((1, 4, 4, 1), np.float32)
    o = np.ones((1, 4, 4, 1), np.float32)
    np.testing.assert_allclose(metrics.f1_score(z, z), [0.0])  # nothing predicted, nothing true
    np.testing.assert_allclose(metrics.iou_score(z, z), [0.0])
    np.testing.assert_allclose(metrics.f1_score(o, o), [np_fscore(o, o)], rtol=1e-6)
    np.testing.assert_allclose(metrics.iou_score(o, o), [16 / (16 + 1e-6)], rtol=1e-6)
    # Official example from evaluation/metrics.py __main__: I = 6, U = 7 + 8 - 6 = 9.
    gt = np.ones((1, 3, 3, 1), np.float32)
    gt[0, 1, 1] = 0
    pr = np.ones((1, 3, 3, 1), np.float32)
    pr[0, 1, 2] = 0
    pr[0, 1, 0] = 0
    np.testing.assert_allclose(metrics.iou_score(pr, gt), [6 / 9], rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Per-image protocol, valid masking, streaming
# ----------------------------------------------------------------------------------------------


@FAST
@given(batches())
def test_per_image_metrics_match_official_pipeline(batch):
    pred, target = batch
    got = per_image_jit(pred, target)
    want = official_per_image(pred, target)
    assert set(got) == {"ap", "f1", "iou"}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_per_image_metrics_normalize_switch():
    rng = np.random.default_rng(3)
    pred = 0.2 + 0.25 * make_pred(rng, "uniform", (2, 8, 8, 1))  # never above 0.5 un-normalized
    target = np.stack([make_target(rng, "blob", (8, 8, 1)), np.ones((8, 8, 1), np.float32)])
    raw = metrics.per_image_metrics(pred, target, normalize=False)
    np.testing.assert_array_equal(raw["f1"], [0.0, 0.0])
    np.testing.assert_array_equal(raw["iou"], [0.0, 0.0])
    normed = metrics.per_image_metrics(pred, target)
    assert normed["f1"][0] > 0.0
    # Official normPRED of the label turns an all-one mask into all-zero (AP 0, IoU 0).
    np.testing.assert_array_equal([normed["ap"][1], normed["iou"][1]], [0.0, 0.0])
    kept = metrics.per_image_metrics(pred, target, normalize_target=False)
    np.testing.assert_allclose(kept["ap"][1], 1.0)


class PerImageJitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_valid_masking(self):
        rng = np.random.default_rng(4)
        pred = make_pred(rng, "sigmoid", (4, 32, 32, 1))
        target = np.stack([make_target(rng, "blob", (32, 32, 1)) for _ in range(4)])
        pred[3] = np.nan  # a padded row may hold garbage
        valid = np.array([True, True, False, False])
        fn = self.variant(functools.partial(metrics.per_image_metrics))
        got = fn(pred, target, valid=valid)
        want = metrics.per_image_metrics(pred[:2], target[:2])
        for k in ("ap", "f1", "iou"):
            np.testing.assert_allclose(got[k][:2], want[k], rtol=1e-6)
            np.testing.assert_array_equal(got[k][2:], 0.0)
        sums = self.variant(metrics.MetricSums.from_batch)(got, valid)
        np.testing.assert_allclose(sums.count, 2.0)
        means = sums.compute()
        for k in ("ap", "f1", "iou"):
            np.testing.assert_allclose(means[k], float(np.mean(want[k])), rtol=1e-5)


def _random_batches(n: int, seed: int):
    rng = np.random.default_rng(seed)
    subsets = np.array(["HCOCO", "HAdobe5k", "HFlickr", "Hday2night"])
    out = []
    for _ in range(n):
        b = 4
        pred = make_pred(rng, "sigmoid", (b, 16, 16, 1))
        target = np.stack(
            [make_target(rng, rng.choice(TARGET_KINDS), (16, 16, 1)) for _ in range(b)]
        )
        valid = rng.random(b) < 0.75
        out.append((pred, target, rng.choice(subsets, b), valid))
    return out


def test_streaming_sums_equal_one_shot_mean():
    batches_ = _random_batches(5, 5)
    from_batch = jax.jit(metrics.MetricSums.from_batch)
    acc = metrics.MetricSums.zeros()
    for pred, target, _, valid in batches_:
        acc = acc.merge(from_batch(per_image_jit(pred, target, valid=valid), valid))
    pred = np.concatenate([b[0] for b in batches_])
    target = np.concatenate([b[1] for b in batches_])
    valid = np.concatenate([b[3] for b in batches_])
    one_shot = official_per_image(pred[valid], target[valid])
    means = acc.compute()
    assert int(acc.count) == valid.sum()
    for k in ("ap", "f1", "iou"):
        np.testing.assert_allclose(means[k], one_shot[k].mean(), rtol=1e-5, err_msg=k)


def test_metric_sums_psum_across_devices():
    # vmap with a named axis stands in for pmap over 3 devices with 2 images each.
    rng = np.random.default_rng(6)
    per_image = {k: rng.random((3, 2)).astype(np.float32) for k in ("ap", "f1", "iou")}
    valid = rng.random((3, 2)) < 0.7

    def per_device(values, v):
        return metrics.MetricSums.from_batch(values, v).psum("devices")

    reduced = jax.jit(jax.vmap(per_device, axis_name="devices"))(per_image, valid)
    np.testing.assert_allclose(reduced.count, [valid.sum()] * 3)
    for k, v in per_image.items():
        np.testing.assert_allclose(reduced.sums[k], [np.sum(v[valid])] * 3, rtol=1e-6)


def test_metric_sums_empty_is_nan():
    assert all(np.isnan(v) for v in metrics.MetricSums.zeros().compute().values())


def test_streaming_metrics_per_subset():
    batches_ = _random_batches(6, 7)
    acc = metrics.StreamingMetrics()
    rows: dict[str, list[dict[str, float]]] = {}
    for pred, target, subsets, valid in batches_:
        per = per_image_jit(pred, target, valid=valid)
        acc.update(per, subsets=subsets, valid=valid)
        per_np = {k: np.asarray(v) for k, v in per.items()}
        for i in np.flatnonzero(valid):
            row = {k: per_np[k][i] for k in per_np}
            rows.setdefault("all", []).append(row)
            rows.setdefault(str(subsets[i]), []).append(row)
    result = acc.result()
    assert list(result)[0] == "all"
    assert set(result) == set(rows)
    for group, items in rows.items():
        assert result[group]["count"] == len(items)
        for k in ("ap", "f1", "iou"):
            want = float(np.mean([r[k] for r in items]))
            np.testing.assert_allclose(result[group][k], want, rtol=1e-6, err_msg=group)


def test_streaming_metrics_without_subsets_and_errors():
    acc = metrics.StreamingMetrics()
    acc.update({"ap": np.array([0.5, 1.0]), "f1": np.array([0.0, 1.0])})
    assert acc.result() == {"all": {"ap": 0.75, "f1": 0.5, "count": 2}}
    with pytest.raises(ValueError, match="reserved"):
        acc.update({"ap": np.array([1.0])}, subsets=np.array(["all"]))
    with pytest.raises(ValueError, match="subsets has 1 entries for 2 images"):
        acc.update({"ap": np.array([1.0, 0.0])}, subsets=["HCOCO"])
    with pytest.raises(ValueError, match="differ in length"):
        acc.update({"ap": np.array([1.0, 0.0]), "f1": np.array([1.0])})


def test_metric_sums_is_pytree():
    s = metrics.MetricSums.from_batch({"ap": jnp.array([0.5, 1.0])})
    leaves = jax.tree_util.tree_leaves(s)
    assert len(leaves) == 2
    doubled = jax.jit(lambda a: a.merge(a))(s)
    assert doubled.compute() == {"ap": 0.75}
    np.testing.assert_allclose(doubled.count, 4.0)


# ----------------------------------------------------------------------------------------------
# Harmonization: junleen/RainNet evaluate.py (tensor2im + skimage) and the iHarmony4 fMSE
# ----------------------------------------------------------------------------------------------


def official_tensor2im(x: np.ndarray) -> np.ndarray:
    """util.tensor2im of one image in [-1, 1] (here HWC): (x + 1) / 2 * 255 cast to uint8."""
    return ((x.astype(np.float32) + 1) / 2.0 * 255.0).astype(np.uint8)


def official_harmonization_scores(pred: np.ndarray, real: np.ndarray, mask: np.ndarray) -> dict:
    """evaluate.py's MSE and PSNR (skimage on the uint8 images), and DoveNet's fMSE
    (mse(out * mask, real * mask) * H * W / foreground area), for one image in [-1, 1]."""
    from skimage.metrics import mean_squared_error, peak_signal_noise_ratio

    p, r = official_tensor2im(pred), official_tensor2im(real)
    m = mask.astype(np.float64)
    fmse = mean_squared_error(p * m, r * m) * m.size / m.sum()
    return {"mse": mean_squared_error(p, r), "psnr": peak_signal_noise_ratio(r, p), "fmse": fmse,
            "fg_ratio": m.mean()}


def test_harmonization_metrics_match_the_official_evaluation():
    rng = np.random.default_rng(0)
    real = rng.uniform(-1, 1, (4, 32, 24, 3)).astype(np.float32)
    pred = np.clip(real + rng.normal(0, 0.1, real.shape), -1, 1).astype(np.float32)
    mask = np.zeros((4, 32, 24, 1), np.float32)
    for i, (h, w) in enumerate([(2, 3), (8, 6), (20, 12), (32, 24)]):
        mask[i, :h, -w:] = 1
    got = jax.jit(metrics.harmonization_metrics)(pred * 0.5 + 0.5, real * 0.5 + 0.5, mask)
    for i in range(4):
        want = official_harmonization_scores(pred[i], real[i], mask[i])
        for k, v in want.items():
            np.testing.assert_allclose(got[k][i], v, rtol=2e-6, err_msg=(i, k))
    # the truncation matters: unquantized scores differ, and equal the float formula
    raw = metrics.harmonization_metrics(pred * 0.5 + 0.5, real * 0.5 + 0.5, mask, quantize=False)
    diff = (pred.astype(np.float64) - real) * 127.5
    np.testing.assert_allclose(raw["mse"], np.mean(diff ** 2, axis=(1, 2, 3)), rtol=1e-5)
    assert np.all(np.abs(np.asarray(raw["mse"]) - np.asarray(got["mse"])) > 1e-3)


def test_harmonization_metric_edge_cases():
    real = np.full((3, 8, 8, 3), 0.5, np.float32)
    pred = real.copy()
    pred[1, :2] = 0.0  # only outside the foreground below
    mask = np.zeros((3, 8, 8, 1), np.float32)
    mask[:2, 4:] = 1
    out = metrics.harmonization_metrics(pred, real, mask, valid=np.array([True, True, False]))
    # a perfect image: MSE 0, PSNR from the floored MSE (finite), fMSE 0
    np.testing.assert_allclose(out["mse"][0], 0.0)
    np.testing.assert_allclose(out["psnr"][0], 10 * np.log10(255.0 ** 2 / metrics.MIN_MSE),
                               rtol=1e-6)
    # an error only in the background: MSE > 0, fMSE 0
    np.testing.assert_allclose(out["mse"][1], 127.0 ** 2 * 16 / 64, rtol=1e-6)
    np.testing.assert_allclose(out["fmse"][1], 0.0)
    np.testing.assert_allclose(out["fg_ratio"][:2], [0.5, 0.5])
    # a padded row is zero everywhere
    assert all(float(v[2]) == 0.0 for v in out.values())
    with pytest.raises(AssertionError):
        metrics.harmonization_metrics(pred, real[:, :4], mask)


def test_fg_ratio_bins_and_their_rows():
    ratios = np.array([0.0, 0.0499, 0.05, 0.1499, 0.15, 1.0])
    assert metrics.fg_ratio_bin(ratios).tolist() == [
        "fg 0-5%", "fg 0-5%", "fg 5-15%", "fg 5-15%", "fg 15-100%", "fg 15-100%"]
    acc = metrics.StreamingMetrics()
    mse = np.arange(6.0)
    acc.update({"mse": mse}, subsets=np.array(["b", "a", "b", "a", "b", "a"]),
               valid=np.array([1, 1, 1, 1, 1, 0], bool), bins=metrics.fg_ratio_bin(ratios))
    result = acc.result()
    assert list(result) == ["all", "a", "b", "fg 0-5%", "fg 5-15%", "fg 15-100%"]
    assert {g: (r["count"], r["mse"]) for g, r in result.items()} == {
        "all": (5, 2.0), "a": (2, 2.0), "b": (3, 2.0), "fg 0-5%": (2, 0.5),
        "fg 5-15%": (2, 2.5), "fg 15-100%": (1, 4.0)}
    with pytest.raises(ValueError, match="both a sub-dataset and a bin"):
        acc.update({"mse": mse[:1]}, subsets=np.array(["fg 0-5%"]), bins=np.array(["fg 0-5%"]))

"""Tests for jirl.losses against independent NumPy/SciPy transcriptions of the official losses."""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from scipy import ndimage

from jirl import losses

SHAPES = ((2, 32, 32, 1), (1, 48, 40, 1), (3, 33, 64, 2))


# ----------------------------------------------------------------------------------------------
# Independent float64 references (written from the formulas, not from jirl)
# ----------------------------------------------------------------------------------------------


def np_bce(p: np.ndarray, t: np.ndarray) -> float:
    """torch nn.BCELoss: -mean(t clamp(log p, -100) + (1 - t) clamp(log(1 - p), -100))."""
    p = p.astype(np.float64)
    t = t.astype(np.float64)
    with np.errstate(divide="ignore"):
        lp = np.maximum(np.log(p), -100.0)
        l1p = np.maximum(np.log(1.0 - p), -100.0)
    return float(-np.mean(t * lp + (1.0 - t) * l1p))


def np_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """2-D Gaussian window: outer product of the normalized 1-D Gaussian."""
    x = np.arange(size) - size // 2
    g = np.exp(-(x**2) / (2.0 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


def np_ssim(a: np.ndarray, b: np.ndarray, size: int = 11) -> float:
    """pytorch_ssim with zero padding, via scipy.ndimage.correlate per image and channel."""
    w = np_window(size)
    a = a.astype(np.float64)
    b = b.astype(np.float64)

    def filt(x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        for i in range(x.shape[0]):
            for c in range(x.shape[-1]):
                out[i, :, :, c] = ndimage.correlate(x[i, :, :, c], w, mode="constant", cval=0.0)
        return out

    mu1, mu2 = filt(a), filt(b)
    s11 = filt(a * a) - mu1**2
    s22 = filt(b * b) - mu2**2
    s12 = filt(a * b) - mu1 * mu2
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    return float(m.mean())


def np_iou_loss(p: np.ndarray, t: np.ndarray) -> float:
    """pytorch_iou: mean over images of 1 - sum(tp) / (sum t + sum p - sum tp)."""
    p = p.astype(np.float64)
    t = t.astype(np.float64)
    vals = []
    for i in range(p.shape[0]):
        inter = np.sum(t[i] * p[i])
        vals.append(1.0 - inter / (t[i].sum() + p[i].sum() - inter))
    return float(np.mean(vals))


def random_pair(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid-like prediction and a blobby binary target."""
    rng = np.random.default_rng(seed)
    pred = (1.0 / (1.0 + np.exp(-3.0 * rng.standard_normal(shape)))).astype(np.float32)
    target = (ndimage.uniform_filter(rng.random(shape), size=(1, 7, 7, 1)) > 0.5).astype(np.float32)
    return pred, target


# ----------------------------------------------------------------------------------------------
# Elementary losses, jit and no-jit
# ----------------------------------------------------------------------------------------------


class ElementaryLossTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*[(s, i) for i, s in enumerate(SHAPES)])
    def test_bce_matches_numpy(self, shape, seed):
        pred, target = random_pair(shape, seed)
        got = self.variant(losses.bce)(pred, target)
        np.testing.assert_allclose(got, np_bce(pred, target), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*[(s, i) for i, s in enumerate(SHAPES)])
    def test_ssim_matches_scipy(self, shape, seed):
        pred, target = random_pair(shape, seed)
        got = self.variant(losses.ssim)(pred, target)
        np.testing.assert_allclose(got, np_ssim(pred, target), rtol=1e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_ssim_soft_target_and_small_window(self):
        pred, _ = random_pair((2, 32, 32, 1), 7)
        soft, _ = random_pair((2, 32, 32, 1), 8)
        got = self.variant(functools.partial(losses.ssim, window_size=5))(pred, soft)
        np.testing.assert_allclose(got, np_ssim(pred, soft, size=5), rtol=1e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*[(s, i) for i, s in enumerate(SHAPES)])
    def test_iou_loss_matches_numpy(self, shape, seed):
        pred, target = random_pair(shape, seed)
        got = self.variant(losses.iou_loss)(pred, target)
        np.testing.assert_allclose(got, np_iou_loss(pred, target), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_perfect_prediction(self):
        _, target = random_pair((2, 32, 32, 1), 3)
        soft, _ = random_pair((2, 32, 32, 1), 4)
        np.testing.assert_allclose(self.variant(losses.ssim)(target, target), 1.0, atol=1e-5)
        np.testing.assert_allclose(self.variant(losses.ssim)(soft, soft), 1.0, atol=1e-5)
        np.testing.assert_allclose(self.variant(losses.iou_loss)(target, target), 0.0, atol=1e-6)
        # BCE of a perfect binary prediction is exactly 0 (log 1 = 0, clamp kills the 0*log 0).
        np.testing.assert_allclose(self.variant(losses.bce)(target, target), 0.0, atol=1e-7)

    @chex.variants(with_jit=True, without_jit=True)
    def test_bce_clamp_at_exact_zero_and_one(self):
        pred = np.array([0.0, 1.0, 0.0, 1.0], np.float32).reshape(1, 2, 2, 1)
        target = np.array([1.0, 0.0, 0.0, 1.0], np.float32).reshape(1, 2, 2, 1)
        got = self.variant(losses.bce)(pred, target)
        np.testing.assert_allclose(got, 50.0)  # two elements at the clamp (100), two at 0
        np.testing.assert_allclose(got, np_bce(pred, target))

    @chex.variants(with_jit=True, without_jit=True)
    def test_bce_gradient_is_torch_formula(self):
        pred = np.array([0.0, 1.0, 0.0, 1.0, 0.3, 0.9], np.float32).reshape(1, 2, 3, 1)
        target = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.2], np.float32).reshape(1, 2, 3, 1)
        grad = self.variant(jax.grad(losses.bce))(pred, target)
        p, t = pred.astype(np.float64), target.astype(np.float64)
        expected = (p - t) / np.maximum(p * (1 - p), 1e-12) / p.size
        assert np.all(np.isfinite(grad))
        np.testing.assert_allclose(grad, expected, rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradients_finite_at_saturated_predictions(self):
        _, target = random_pair((2, 32, 32, 1), 5)
        pred = np.where(np.random.default_rng(0).random(target.shape) < 0.5, 0.0, 1.0)
        pred = pred.astype(np.float32)

        def loss(p):
            return losses.mask_loss(p, target, "bce_ssim_iou")[0]

        value, grad = self.variant(jax.value_and_grad(loss))(pred)
        assert np.isfinite(value)
        assert np.all(np.isfinite(grad))

    @chex.variants(with_jit=True, without_jit=True)
    def test_iou_all_zero_is_nan_like_official_unless_eps(self):
        zeros = np.zeros((2, 8, 8, 1), np.float32)
        # Official pytorch_iou has no epsilon: 0 / 0 = NaN. Kept faithful; eps opts out.
        assert np.isnan(self.variant(losses.iou_loss)(zeros, zeros))
        fixed = self.variant(functools.partial(losses.iou_loss, eps=1e-6))(zeros, zeros)
        np.testing.assert_allclose(fixed, 1.0)

    def test_gaussian_window(self):
        g = losses.gaussian_window_1d(11, 1.5)
        assert g.dtype == np.float32 and g.shape == (11,)
        np.testing.assert_allclose(g.sum(), 1.0, rtol=1e-6)
        np.testing.assert_allclose(np.outer(g, g), np_window(11, 1.5), rtol=1e-6)
        expected0 = math.exp(-25 / 4.5) / sum(math.exp(-((x - 5) ** 2) / 4.5) for x in range(11))
        np.testing.assert_allclose(g[0], expected0, rtol=1e-6)

    def test_shape_mismatch_raises(self):
        with pytest.raises(AssertionError):
            losses.bce(jnp.zeros((1, 8, 8, 1)), jnp.zeros((1, 8, 4, 1)))


# ----------------------------------------------------------------------------------------------
# Combined objectives
# ----------------------------------------------------------------------------------------------


def _parts(pred, target):
    return np_bce(pred, target), 1.0 - np_ssim(pred, target), np_iou_loss(pred, target)


class ObjectiveTest(chex.TestCase):
    def setUp(self):
        super().setUp()
        shape = (2, 32, 32, 1)
        self.mask, self.target = random_pair(shape, 11)
        self.maps = [random_pair(shape, 20 + k)[0] for k in range(3)]

    @chex.variants(with_jit=True, without_jit=True)
    def test_mask_loss_modes(self):
        b, s, i = _parts(self.mask, self.target)
        total, parts = self.variant(functools.partial(losses.mask_loss, mode="bce_ssim_iou"))(
            self.mask, self.target
        )
        assert set(parts) == {"bce", "ssim", "iou"}
        np.testing.assert_allclose(total, b + s + i, rtol=1e-5)
        np.testing.assert_allclose(
            [parts["bce"], parts["ssim"], parts["iou"]], [b, s, i], rtol=1e-4
        )
        total, parts = self.variant(functools.partial(losses.mask_loss, mode="bce_ssim"))(
            self.mask, self.target
        )
        assert set(parts) == {"bce", "ssim"}
        np.testing.assert_allclose(total, b + s, rtol=1e-5)
        total, parts = self.variant(functools.partial(losses.mask_loss, mode="bce_iou"))(
            self.mask, self.target
        )
        assert set(parts) == {"bce", "iou"}  # MadisNet's loss_weights [1, 0, 1]
        np.testing.assert_allclose(total, b + i, rtol=1e-5)
        total, parts = self.variant(functools.partial(losses.mask_loss, mode="bce"))(
            self.mask, self.target
        )
        assert set(parts) == {"bce"}
        np.testing.assert_allclose(total, b, rtol=1e-5)

    def test_unknown_mode(self):
        with pytest.raises(ValueError, match="bce_ssim_iou"):
            losses.mask_loss(self.mask, self.target, "dice")

    @chex.variants(with_jit=True, without_jit=True)
    def test_dirl_official_is_hand_sum(self):
        fn = functools.partial(
            losses.dirl_objective, variant="official", lambda_attention=0.7, lambda_detection=1.3
        )
        total, logs = self.variant(fn)(self.mask, self.maps, self.target)
        det = sum(_parts(self.mask, self.target))
        att = sum(sum(_parts(m, self.target)) for m in self.maps)
        np.testing.assert_allclose(total, 1.3 * det + 0.7 * att, rtol=1e-5)
        np.testing.assert_allclose(logs["total"], total)
        np.testing.assert_allclose(logs["detection"], det, rtol=1e-5)
        np.testing.assert_allclose(logs["attention"], att, rtol=1e-5)
        b, s, i = _parts(self.mask, self.target)
        np.testing.assert_allclose([logs["bce"], logs["ssim"], logs["iou"]], [b, s, i], rtol=1e-4)
        assert set(logs) == {"total", "detection", "attention", "bce", "ssim", "iou"}

    def test_dirl_official_defaults_are_lambda_one(self):
        total, logs = losses.dirl_objective(self.mask, self.maps, self.target)
        np.testing.assert_allclose(total, logs["detection"] + logs["attention"], rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_dirl_paper_variant(self):
        fn = functools.partial(losses.dirl_objective, variant="paper")
        total, logs = self.variant(fn)(self.mask, self.maps, self.target)
        b, s, _ = _parts(self.mask, self.target)
        att = sum(np_bce(m, self.target) for m in self.maps)
        np.testing.assert_allclose(total, b + s + 0.1 * att, rtol=1e-5)
        np.testing.assert_allclose(logs["attention"], att, rtol=1e-5)
        assert set(logs) == {"total", "detection", "attention", "bce", "ssim"}

    def test_dirl_no_attention_maps(self):
        total, logs = losses.dirl_objective(self.mask, [], self.target)
        np.testing.assert_allclose(total, sum(_parts(self.mask, self.target)), rtol=1e-5)
        np.testing.assert_allclose(logs["attention"], 0.0)

    def test_dirl_unknown_variant(self):
        with pytest.raises(ValueError, match=r"'official'.*'paper'"):
            losses.dirl_objective(self.mask, self.maps, self.target, variant="cbam")

    @chex.variants(with_jit=True, without_jit=True)
    def test_deep_supervision_rsrnet_weights(self):
        k = len(self.maps)
        weights = [1.0] + [0.8 ** (k - j) for j in range(1, k + 1)]
        masks = [self.mask, *self.maps]
        fn = functools.partial(losses.deep_supervision_objective, weights=weights, mode="bce_ssim")
        total, parts = self.variant(fn)(masks, target=self.target)
        per = [_parts(m, self.target) for m in masks]
        expected = sum(w * (b + s) for w, (b, s, _) in zip(weights, per, strict=True))
        np.testing.assert_allclose(total, expected, rtol=1e-5)
        # Parts are unweighted sums, as in multi_bce_loss_fusion.
        np.testing.assert_allclose(parts["bce"], sum(p[0] for p in per), rtol=1e-5)
        np.testing.assert_allclose(parts["ssim"], sum(p[1] for p in per), rtol=1e-4)

    def test_deep_supervision_length_mismatch(self):
        with pytest.raises(ValueError, match="one weight per mask"):
            losses.deep_supervision_objective([self.mask], [1.0, 0.5], self.target)

    def test_objective_gradients_finite(self):
        def loss(mask, maps):
            return losses.dirl_objective(mask, maps, self.target)[0]

        g_mask, g_maps = jax.jit(jax.grad(loss, argnums=(0, 1)))(self.mask, self.maps)
        assert np.all(np.isfinite(g_mask))
        assert all(np.all(np.isfinite(g)) for g in g_maps)

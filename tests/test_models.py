"""DIRL and its shared layers: shapes, PyTorch-compatible numerics, jit agreement, gradients."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from jirl.models import available_models, cpu_conv, dirl, get_spec, layers
from jirl.models.resnet import BasicBlock, Encoder, ResLayer

TINY = dict(stem_features=8, stage_features=(8, 8, 16, 16, 24), stage_blocks=(1, 2, 1, 1, 1),
            ggd_ch=8)


def _tiny():
    return dirl.DIRL(**TINY)


def _init(model, shape, *args):
    """Initializes under jit (op-by-op initialization of a whole network is slow on CPU)."""
    return jax.jit(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), *args))()


# ---------------------------------------------------------------- shared layers


def test_conv2d_matches_scipy_correlate():
    x = np.random.default_rng(0).normal(size=(1, 7, 9, 2)).astype(np.float32)
    conv = layers.Conv2d(3, kernel_size=3, stride=1, padding=1)
    v = conv.init(jax.random.PRNGKey(1), x)
    y = np.asarray(conv.apply(v, x))
    k, b = np.asarray(v["params"]["kernel"]), np.asarray(v["params"]["bias"])
    for o in range(3):
        ref = sum(ndimage.correlate(x[0, :, :, i], k[:, :, i, o], mode="constant")
                  for i in range(2)) + b[o]
        np.testing.assert_allclose(y[0, :, :, o], ref, rtol=1e-5, atol=1e-5)


def test_conv2d_stride_and_padding_shape():
    conv = layers.Conv2d(4, kernel_size=3, stride=2, padding=1)
    x = jnp.zeros((2, 15, 16, 3))
    y = conv.apply(conv.init(jax.random.PRNGKey(0), x), x)
    chex.assert_shape(y, (2, 8, 8, 4))  # floor((15 + 2 - 3) / 2) + 1 = 8, as torch


def test_batchnorm_train_and_eval_match_torch_semantics():
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 5, 5, 3)).astype(np.float32)
    bn = layers.BatchNorm(momentum=0.1)
    v = bn.init(jax.random.PRNGKey(0), x, train=False)
    chex.assert_trees_all_close(v["batch_stats"]["mean"], np.zeros(3))
    y, upd = bn.apply(v, x, train=True, mutable=["batch_stats"])
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    np.testing.assert_allclose(np.asarray(y), (x - mean) / np.sqrt(var + 1e-5), atol=1e-4)
    n = 4 * 5 * 5
    np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 + 0.1 * var * n / (n - 1),
                               rtol=1e-5)
    y_eval = bn.apply({"params": v["params"], "batch_stats": upd["batch_stats"]}, x, train=False)
    ref = (x - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var * n / (n - 1) + 1e-5)
    np.testing.assert_allclose(np.asarray(y_eval), ref, atol=1e-4)


def _bilinear_reference(img, out_h, out_w, align_corners):
    """Independent per-pixel transcription of PyTorch's bilinear sampling rule."""
    in_h, in_w = img.shape

    def src(i, n_in, n_out):
        if align_corners:
            return i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        return max((i + 0.5) * n_in / n_out - 0.5, 0.0)

    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            y, x = src(i, in_h, out_h), src(j, in_w, out_w)
            y0, x0 = min(int(np.floor(y)), in_h - 1), min(int(np.floor(x)), in_w - 1)
            y1, x1 = min(y0 + 1, in_h - 1), min(x0 + 1, in_w - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = ((1 - dy) * (1 - dx) * img[y0, x0] + (1 - dy) * dx * img[y0, x1]
                         + dy * (1 - dx) * img[y1, x0] + dy * dx * img[y1, x1])
    return out


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("size", [(8, 14), (3, 4), (10, 7)])
def test_resize_bilinear_matches_torch_rule(align_corners, size):
    img = np.random.default_rng(1).normal(size=(5, 7)).astype(np.float32)
    y = layers.resize_bilinear(jnp.asarray(img)[None, :, :, None], size, align_corners)
    ref = _bilinear_reference(img, *size, align_corners)
    np.testing.assert_allclose(np.asarray(y)[0, :, :, 0], ref, atol=1e-5)


def test_half_pixel_upsampling_agrees_with_jax_image_resize():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 5, 3))
    ours = layers.resize_bilinear(x, (24, 20), align_corners=False)
    chex.assert_trees_all_close(ours, jax.image.resize(x, (2, 24, 20, 3), "bilinear"), atol=1e-5)


def test_nearest_upsample_and_max_pool():
    x = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(1, 3, 4, 2)
    up = layers.upsample_nearest2x(x)
    chex.assert_shape(up, (1, 6, 8, 2))
    np.testing.assert_array_equal(up[0, 1::2, 1::2], x[0])
    pooled = layers.max_pool(-(x + 1))  # torch MaxPool2d(3, 2, 1) pads with -inf, not zeros
    chex.assert_shape(pooled, (1, 2, 2, 2))
    assert float(pooled.max()) < 0


# ---------------------------------------------------------------- blocks


def test_basic_block_shortcuts():
    x = jnp.ones((1, 8, 8, 4))
    bb = BasicBlock(8, stride=2)
    v = _init(bb, x.shape, False)
    assert set(v["params"]) == {"conv1", "bn1", "conv2", "bn2", "downsample_conv", "downsample_bn"}
    chex.assert_shape(bb.apply(v, x, False), (1, 4, 4, 8))
    dirl_bb = BasicBlock(8, shortcut="conv_bias")
    v = _init(dirl_bb, x.shape, False)
    assert "bias" in v["params"]["downsample_conv"] and "downsample_bn" not in v["params"]
    identity = BasicBlock(4)
    assert "downsample_conv" not in _init(identity, x.shape, False)["params"]
    with pytest.raises(ValueError, match="no stride"):
        _init(BasicBlock(8, stride=2, shortcut="conv_bias"), x.shape, False)


def test_res_layer_depth():
    v = _init(ResLayer(8, 3, 2), (1, 8, 8, 4), False)
    assert sorted(v["params"]) == ["block0", "block1", "block2"]


@pytest.mark.parametrize("mode,shapes,out_hw", [
    ("h2l", [(2, 16, 16, 4), (2, 8, 8, 6)], (16, 16)),
    ("hl2m", [(2, 16, 16, 4), (2, 8, 8, 6), (2, 4, 4, 8)], (8, 8)),
    ("l2h", [(2, 8, 8, 6), (2, 4, 4, 8)], (4, 4)),
])
def test_bfi_modes_output_at_their_level(mode, shapes, out_hw):
    xs = [jnp.ones(s) for s in shapes]
    bfi = dirl.BFI(5, mode)
    v = jax.jit(lambda xs: bfi.init(jax.random.PRNGKey(0), xs, False))(xs)
    chex.assert_shape(jax.jit(lambda v, xs: bfi.apply(v, xs, False))(v, xs), (2, *out_hw, 5))


def test_bfi_unknown_mode():
    with pytest.raises(ValueError, match="unknown BFI mode"):
        dirl.BFI(4, "m2h").init(jax.random.PRNGKey(0), [jnp.ones((1, 4, 4, 2))] * 2, False)


def test_eca_is_a_1d_conv_over_pooled_channels():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 6))
    eca = dirl.ECA()
    v = eca.init(jax.random.PRNGKey(1), x)
    w = np.asarray(v["params"]["kernel"])
    pooled = np.asarray(x).mean((1, 2))
    gate = np.stack([np.convolve(np.pad(p, 1), w[::-1], mode="valid") for p in pooled])
    ref = np.asarray(x) / (1 + np.exp(-gate))[:, None, None, :]
    np.testing.assert_allclose(np.asarray(eca.apply(v, x)), ref, rtol=1e-5, atol=1e-6)


def test_mda_returns_features_and_a_probability_map():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4))
    mda = dirl.MDA()
    v = mda.init(jax.random.PRNGKey(1), x, False)
    # running statistics away from their init (0, 1) and small, so that both the (1 - momentum) * old
    # term and the batch term (with its unbiased n / (n - 1) variance) weigh in the result
    old = jax.tree.map(lambda s: jax.random.uniform(jax.random.PRNGKey(2), s.shape, minval=5e-3, maxval=2e-2),
                       v["batch_stats"])
    (y, att), upd = mda.apply({"params": v["params"], "batch_stats": old}, x, True,
                              mutable=["batch_stats"], capture_intermediates=True)
    chex.assert_shape([y, att], [(2, 8, 8, 4), (2, 8, 8, 1)])
    assert float(att.min()) >= 0 and float(att.max()) <= 1
    # both BatchNorms of the spatial gate use PyTorch momentum 0.01 (the official BasicConv):
    # new = 0.99 old + 0.01 batch statistic of the BN's input (the conv output), unbiased variance
    for conv in ("conv0", "conv1"):
        bn_input = np.asarray(upd["intermediates"]["spatial_gate"][conv]["conv"]["__call__"][0], np.float64)
        n = bn_input.size // bn_input.shape[-1]
        assert n == 2 * 8 * 8
        before = old["spatial_gate"][conv]["bn"]
        expected = {"mean": 0.99 * np.asarray(before["mean"]) + 0.01 * bn_input.mean((0, 1, 2)),
                    "var": 0.99 * np.asarray(before["var"]) + 0.01 * bn_input.var((0, 1, 2), ddof=1)}
        chex.assert_trees_all_close(upd["batch_stats"]["spatial_gate"][conv]["bn"], expected,
                                    rtol=1e-5, atol=0)


@pytest.mark.parametrize("hw", [(32, 32), (64, 48)])
def test_encoder_and_decoder_shapes(hw):
    x = jnp.zeros((2, *hw, 3))
    enc = Encoder(8, (8, 8, 16, 16, 24), (1, 1, 1, 1, 1))
    skips = jax.jit(lambda v, x: enc.apply(v, x, False))(_init(enc, x.shape, False), x)
    h, w = hw
    chex.assert_shape(skips, [(2, h, w, 8), (2, h // 2, w // 2, 8), (2, h // 4, w // 4, 16),
                              (2, h // 8, w // 8, 16), (2, h // 16, w // 16, 24)])
    dec = dirl.Decoder(ggd_ch=8)
    v = jax.jit(lambda s: dec.init(jax.random.PRNGKey(0), s, False))(skips)
    logits, att = jax.jit(lambda v, s: dec.apply(v, s, False))(v, skips)
    chex.assert_shape(logits, (2, h, w, 1))
    chex.assert_shape(list(att), [(2, h, w, 1)] * 5)
    assert "conv4" in v["params"]["ggd"]["d0"]  # owned by the official model, never called


# ---------------------------------------------------------------- the whole model


@pytest.mark.parametrize("hw", [(32, 32), (64, 32)])
def test_dirl_output_shapes_and_ranges(hw):
    m = _tiny()
    x = jax.random.normal(jax.random.PRNGKey(0), (2, *hw, 3))
    out = jax.jit(lambda v, x: m.apply(v, x, train=False))(_init(m, x.shape), x)
    chex.assert_shape(out["mask"], (2, *hw, 1))
    chex.assert_shape(list(out["attention"]), [(2, *hw, 1)] * 5)
    chex.assert_trees_all_close(out["mask"], jax.nn.sigmoid(out["logits"]))
    chex.assert_tree_all_finite(out)


def test_dirl_rejects_bad_input_shapes():
    m = _tiny()
    with pytest.raises(ValueError, match="multiples of 16"):
        _init(m, (1, 40, 32, 3))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        _init(m, (1, 32, 32, 1))


class JitAgreementTest(chex.TestCase):
    """The same DIRL forward pass (train mode, BN statistic updates included) with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_dirl_jit_and_no_jit_agree(self):
        m = dirl.DIRL(stem_features=4, stage_features=(4, 4, 8, 8, 8), stage_blocks=(1,) * 5,
                      ggd_ch=4)
        x = jax.random.normal(jax.random.PRNGKey(0), (1, 32, 32, 3))
        v = _init(m, x.shape)

        @self.variant
        def fwd(v, x):
            return m.apply(v, x, train=True, mutable=["batch_stats"])

        out, upd = fwd(v, x)
        ref, ref_upd = jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))(
            v, x)
        chex.assert_trees_all_close(out, ref, atol=1e-5)
        chex.assert_trees_all_close(upd, ref_upd, atol=1e-5)


def test_gradients_reach_every_parameter(params_without_gradient):
    m = _tiny()
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    target = (jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 1)) > 0.7).astype(jnp.float32)
    v = _init(m, x.shape)
    unused = params_without_gradient(m, v, x, lambda out: sum(
        jnp.mean((a - target) ** 2) for a in (out["mask"], *out["attention"])))
    # the only parameter without a gradient is the official model's uncalled GGD `conv4`
    assert unused and all("'conv4'" in k for k in unused), unused
    assert len(unused) == 3  # conv kernel, BN scale, BN bias


def test_official_parameter_count():
    cfg = get_spec("dirl")
    assert cfg.name == "dirl"
    m = dirl.DIRL()  # ResNet34 widths, ggd_ch=32: the official default
    shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))
    assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == 53_471_354


def test_registry():
    assert "dirl" in available_models()
    with pytest.raises(ValueError, match="unknown model 'nope'; available: .*dirl"):
        get_spec("nope")


# ---------------------------------------------------------------- memory/speed rewrites (issue #5)


def _textbook_batch_norm(x, scale, bias, eps=1e-5):
    mean = jnp.mean(x, (0, 1, 2))
    var = jnp.mean(jnp.square(x - mean), (0, 1, 2))
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias, mean, var


def test_batch_norm_train_custom_gradient_equals_autodiff():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(3.0, 2.0, (4, 5, 6, 3)), jnp.float32)
    scale, bias = jnp.asarray([1.5, -0.5, 2.0]), jnp.asarray([0.1, 0.2, 0.3])
    w = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

    def loss(fn):  # uses y, mean and var, so every cotangent of the custom rule is exercised
        def f(x, s, b):
            y, m, v = fn(x, s, b)
            return jnp.sum(jnp.sin(y) * w) + jnp.sum(m * jnp.arange(3.0)) + jnp.sum(v ** 2)
        return f

    ours = jax.grad(loss(lambda x, s, b: layers.batch_norm_train(x, s, b, 1e-5)), (0, 1, 2))
    ref = jax.grad(loss(_textbook_batch_norm), (0, 1, 2))
    chex.assert_trees_all_close(ours(x, scale, bias), ref(x, scale, bias), rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(layers.batch_norm_train(x, scale, bias, 1e-5),
                                _textbook_batch_norm(x, scale, bias), rtol=1e-5, atol=1e-5)


def test_conv_of_nearest_upsample_equals_upsample_then_conv():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 5, 7, 3)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    ref = jax.lax.conv_general_dilated(layers.upsample_nearest2x(x), kernel, (1, 1),
                                       ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out = layers.conv3x3_of_upsample_nearest2x(x, kernel)
    chex.assert_shape(out, (2, 10, 14, 4))
    chex.assert_trees_all_close(out, ref, atol=1e-5)
    # the same through a ConvBlock (activation first, as DIRL's BFI): params and layout unchanged
    fused = layers.ConvBlock(4, activation_first=True, upsample_input=True)
    plain = layers.ConvBlock(4, activation_first=True)
    v = plain.init(jax.random.PRNGKey(0), layers.upsample_nearest2x(x), train=False)
    y_fused, upd_fused = fused.apply(v, x, train=True, mutable=["batch_stats"])
    y_plain, upd_plain = plain.apply(v, layers.upsample_nearest2x(x), train=True,
                                     mutable=["batch_stats"])
    chex.assert_trees_all_close((y_fused, upd_fused), (y_plain, upd_plain), atol=1e-5)
    with pytest.raises(ValueError, match="3x3 conv with stride 1"):
        layers.Conv2d(4, 3, stride=2, padding=1, upsample_input=True).init(
            jax.random.PRNGKey(0), x)


@pytest.mark.parametrize("height, width", [(1, 1), (2, 3), (5, 4)])
def test_conv_transpose_equals_the_zero_dilated_conv_with_gradients(height, width):
    """ConvTranspose2d(4, stride 2, padding 1) as matmul + overlap-add against its textbook
    form, a conv of the zero-dilated input with the flipped kernel padded by k - 1 - p = 2."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, height, width, 3)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(4, 4, 3, 5)), jnp.float32)

    def ref(x, kernel):
        return jax.lax.conv_general_dilated(x, kernel[::-1, ::-1], (1, 1), ((2, 2), (2, 2)),
                                            lhs_dilation=(2, 2),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    out = jax.jit(layers.conv_transpose4x4_stride2)(x, kernel)
    chex.assert_shape(out, (2, 2 * height, 2 * width, 5))
    chex.assert_trees_all_close(out, ref(x, kernel), atol=1e-5)
    weights = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
    grads = [jax.grad(lambda x, k, f=f: jnp.sum(f(x, k) * weights), argnums=(0, 1))(x, kernel)
             for f in (layers.conv_transpose4x4_stride2, ref)]
    chex.assert_trees_all_close(grads[0], grads[1], atol=1e-4)


@pytest.mark.parametrize("size, k, stride, padding, dilation",
                         [(9, 3, 2, 0, 1), (10, 3, 2, 1, 1), (16, 7, 2, 3, 1), (13, 3, 3, 1, 1),
                          (12, 3, 2, 2, 2)])
def test_strided_conv_gradients_to_second_order_equal_xlas(size, k, stride, padding, dilation):
    """conv2d's CPU backward (tap-wise kernel gradient; for strides > 1 the input gradient as a
    matmul + overlap-add) against XLA's own differentiation of the conv, to second order (the
    kernel gradient of the input gradient's norm, as a gradient penalty takes it). In float64,
    so that only a wrong formula (not summation order) can tell the two apart."""
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(2, size, size - 1, 3)), jnp.float64)
        kernel = jnp.asarray(rng.normal(size=(k, k, 3, 4)), jnp.float64)

        def first(conv):
            return jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w, stride, padding, dilation))),
                            argnums=(0, 1))

        def second(conv):
            return jax.grad(lambda w: jnp.sum(first(conv)(x, w)[0] ** 2))

        chex.assert_trees_all_close(first(cpu_conv.conv2d)(x, kernel),
                                    first(cpu_conv.xla_conv)(x, kernel), rtol=1e-10, atol=1e-10)
        ours, xla = second(cpu_conv.conv2d)(kernel), second(cpu_conv.xla_conv)(kernel)
        chex.assert_trees_all_close(ours, xla, rtol=1e-10, atol=1e-10 * float(jnp.max(jnp.abs(xla))))


@pytest.mark.parametrize("k, stride, padding, dilation", [(3, 1, 1, 1), (4, 2, 1, 1), (3, 2, 0, 1),
                                                      (3, 1, 2, 2), (1, 1, 0, 1), (1, 2, 0, 1)])
def test_im2col_conv_equals_xlas_conv_in_float64(k, stride, padding, dilation):
    """The matrix-product form conv2d takes on the CPU for 1x1 kernels and small outputs
    (`_prefers_im2col`) gives XLA's conv to float64 round-off, and conv2d does take it there."""
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=(2, 8, 7, 3)), jnp.float64)
        kernel = jnp.asarray(rng.normal(size=(k, k, 3, 5)), jnp.float64)
        ref = cpu_conv.xla_conv(x, kernel, stride, padding, dilation)
        ours = cpu_conv._conv_as_im2col(x, kernel, stride, padding, dilation)
        chex.assert_equal_shape([ours, ref])
        chex.assert_trees_all_close(ours, ref, rtol=1e-12, atol=1e-12)
    wide = (k, k, 128, 5)  # patches of k * k * 128 >= 1024 columns when k > 1
    assert cpu_conv._prefers_im2col((*x.shape[:3], 128), wide, stride, padding, dilation)
    assert cpu_conv._prefers_im2col(x.shape, kernel.shape, stride, padding, dilation) == (k == 1)
    assert not cpu_conv._prefers_im2col((2, 64, 64, 128), (3, 3, 128, 5), 1, 1, 1)
    assert cpu_conv._prefers_im2col((2, 64, 64, 3), (1, 1, 3, 5), 1, 0, 1)


def test_importing_jirl_selects_the_memory_minimizing_cpu_scheduler():
    import os

    import jirl

    assert "--xla_cpu_enable_concurrency_optimized_scheduler=false" in os.environ["XLA_FLAGS"]
    assert jirl.XLA_DEFAULT_FLAGS


@pytest.mark.parametrize("stride,padding,dilation,k", [(1, 1, 1, 3), (2, 1, 1, 3), (1, 2, 2, 3),
                                                       (1, 0, 1, 1), (2, 3, 1, 7)])
def test_conv_tapwise_kernel_gradient_equals_xlas(stride, padding, dilation, k):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 9, 11, 3)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, 3, 5)), jnp.float32)

    def loss(conv):
        def f(x, kern):
            y = conv(x, kern, stride, padding, dilation)
            return jnp.sum(jnp.sin(y) * jnp.cos(jnp.arange(y.size).reshape(y.shape)))
        return f

    ours = jax.jit(jax.grad(loss(cpu_conv._conv_tapwise_grad), (0, 1)))(x, kernel)
    ref = jax.jit(jax.grad(loss(cpu_conv.xla_conv), (0, 1)))(x, kernel)
    chex.assert_trees_all_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_from_config_builds_from_model_keys_and_rejects_unknown_ones():
    from jirl.configs import dirl as dirl_config

    from jirl.models import from_config

    cfg = dirl_config.get_config("quick").model
    m = from_config(dirl.DIRL, cfg, jnp.bfloat16)
    assert (m.stage_features, m.ggd_ch, m.dtype) == ((16, 32, 64, 96, 96), 16, jnp.bfloat16)
    cfg.unlock()
    cfg.ggd_channels = 8  # misspelt
    with pytest.raises(ValueError, match="does not take: \\['ggd_channels'\\]"):
        from_config(dirl.DIRL, cfg, jnp.float32)


def test_add_bias_sums_the_bias_gradient_in_float32():
    """A bf16 activation's bias gradient is a sum over 16,384 pixels: reduced in float32."""
    y = jnp.zeros((4, 64, 64, 2), jnp.bfloat16)
    bias = jnp.array([0.5, -1.0], jnp.float32)
    out, vjp = jax.vjp(layers.add_bias, y, bias)
    chex.assert_type(out, jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(out[0, 0, 0], np.float32), [0.5, -1.0])
    g = jnp.full(y.shape, 0.01, jnp.bfloat16)
    dy, dbias = vjp(g)
    chex.assert_type([dy, dbias], [jnp.bfloat16, jnp.float32])
    expected = 4 * 64 * 64 * float(jnp.bfloat16(0.01))
    np.testing.assert_allclose(np.asarray(dbias), [expected, expected], rtol=1e-6)
    # the reduction itself runs on float32 values (XLA may otherwise accumulate in bf16 inside a
    # fusion: DIRL's output-conv bias gradient came out 77 % off, tests/test_bf16.py)
    jaxpr = jax.make_jaxpr(vjp)(g)
    sums = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "reduce_sum"]
    assert sums and all(e.invars[0].aval.dtype == jnp.float32 for e in sums), jaxpr


@pytest.mark.parametrize("stride,padding,dilation,k", [(1, 1, 1, 3), (2, 1, 1, 3), (1, 2, 2, 3),
                                                       (1, 0, 1, 1), (2, 3, 1, 7), (2, 1, 1, 4)])
def test_bf16_conv_on_cpu_is_bf16_dots_rounded_once(stride, padding, dilation, k):
    """A bf16 conv2d on CPU, not differentiated, runs as bf16 matrix products (XLA:CPU would
    upcast a bf16 convolution to f32) and equals the exact convolution of its bf16 operands
    rounded once to bf16."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 10, 9, 5)), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(k, k, 5, 6)), jnp.bfloat16)
    conv = jax.jit(lambda x, w: cpu_conv.conv2d(x, w, stride, padding, dilation))
    y = conv(x, kernel)
    exact = torch_like_conv(np.asarray(x, np.float64), np.asarray(kernel, np.float64), stride,
                            padding, dilation)
    chex.assert_shape(y, exact.shape)
    assert y.dtype == jnp.bfloat16
    rounded = np.asarray(jnp.asarray(exact, jnp.float32).astype(jnp.bfloat16), np.float64)
    ulp = 2.0 ** (np.floor(np.log2(np.maximum(np.abs(exact), 1e-30))) - 7)
    err = np.abs(np.asarray(y, np.float64) - exact)
    assert np.all(err <= ulp), float((err / ulp).max())  # within one bf16 step of the exact value
    assert np.mean(np.asarray(y, np.float64) == rounded) > 0.97  # and nearly always its rounding
    hlo = conv.lower(x, kernel).compile().as_text()
    assert " convolution(" not in hlo
    dot_computations = [c for c in hlo.split("\n\n") if " dot(" in c]
    assert len(dot_computations) == k * k  # one product per tap, each of bf16 operands
    assert all(re.match(r"%\S+ \(param_0\S*: bf16\[.*param_1\S*: bf16\[", c.strip())
               for c in dot_computations), dot_computations[0]


def torch_like_conv(x: np.ndarray, kernel: np.ndarray, stride: int, padding: int,
                    dilation: int) -> np.ndarray:
    """F.conv2d's definition, NHWC x HWIO, in float64 loops over the kernel taps."""
    n, h, w, _ = x.shape
    kh, kw, _, cout = kernel.shape
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    y = np.zeros((n, ho, wo, cout))
    for i in range(kh):
        for j in range(kw):
            window = xp[:, i * dilation::stride, j * dilation::stride][:, :ho, :wo]
            y += window @ kernel[i, j]
    return y

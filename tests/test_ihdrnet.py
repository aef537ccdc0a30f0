"""iHDRNet (MadisNet's bilateral-grid colour mapping): the bilateral slice against float64 numpy,
torch's grid_sample (fixture) and finite differences; the central-difference conv; the whole
network's shapes, gradients and a replay of the official forward pass (no torch needed)."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from test_unet import synthetic_tensor

from jirl.convert import madisnet as convert
from jirl.models import ihdrnet, layers
from jirl.runtime.mapping import assign
from jirl.runtime.torch_io import ConversionError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# `sum(p.numel() for p in HDRPointwiseNN(opt).parameters())` with the official networks/iHDRNet.py
# and its train.py options (luma_bins 16, channel_multiplier 1, spatial_bin 16, net_input_size 256).
OFFICIAL_PARAMS = 1_472_226
TINY = dict(luma_bins=4, splat_layers=2)  # 4/8-channel splat, 1/4 resolution


# ---------------------------------------------------------------- the bilateral slice


def reference_slice(grid: np.ndarray, guide: np.ndarray) -> np.ndarray:
    """Trilinear sampling written out per pixel in float64 (independent of jirl's formulations):
    pixel (i, j) reads grid position (i / (H-1) * (gh-1), j / (W-1) * (gw-1), (g+1)/2 * (D-1)),
    corners outside the grid reading zero."""
    grid = grid.astype(np.float64)
    b, gh, gw, depth, c = grid.shape
    h, w = guide.shape[1:]
    out = np.zeros((b, h, w, c))
    for n in range(b):
        for i in range(h):
            for j in range(w):
                pos = (i / (h - 1) * (gh - 1), j / (w - 1) * (gw - 1),
                       (float(guide[n, i, j]) + 1) / 2 * (depth - 1))
                lo = [int(np.floor(p)) for p in pos]
                for corner in np.ndindex(2, 2, 2):
                    idx = [lo[a] + corner[a] for a in range(3)]
                    wt = np.prod([1 - abs(pos[a] - idx[a]) for a in range(3)])
                    if all(0 <= idx[a] < s for a, s in enumerate((gh, gw, depth))):
                        out[n, i, j] += wt * grid[n, idx[0], idx[1], idx[2]]
    return out


def _random_slice_inputs(seed, b, gh, gw, depth, c, h, w):
    rng = np.random.default_rng(seed)
    grid = rng.standard_normal((b, gh, gw, depth, c)).astype(np.float32)
    guide = np.tanh(2 * rng.standard_normal((b, h, w))).astype(np.float32)
    guide[0, 0, :3] = (-1.0, 0.0, 1.0)  # both ends of the luma axis and a bin centre
    return grid, guide


@pytest.mark.parametrize("method", ihdrnet.SLICE_METHODS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 4, 3, 12, 20), (1, 4, 2, 6, 2, 9, 7)])
def test_slice_matches_a_float64_reference(method, shape):
    grid, guide = _random_slice_inputs(0, *shape)
    out = jax.jit(lambda g, u: ihdrnet.bilateral_slice(g, u, method))(grid, guide)
    chex.assert_shape(out, (*guide.shape, grid.shape[-1]))
    np.testing.assert_allclose(np.asarray(out), reference_slice(grid, guide), atol=3e-6, rtol=0)


def test_slice_axes_follow_the_image_axes():
    """A grid that varies only along its height axis gives a slice that varies only along rows."""
    grid = np.zeros((1, 4, 3, 2, 1), np.float32)
    grid[0, :, :, :, 0] = np.arange(4, dtype=np.float32)[:, None, None]
    out = np.asarray(ihdrnet.bilateral_slice(grid, np.zeros((1, 7, 5), np.float32)))[0, ..., 0]
    np.testing.assert_allclose(out, np.repeat(np.linspace(0, 3, 7)[:, None], 5, 1), atol=1e-6)


@pytest.mark.parametrize("method", ihdrnet.SLICE_METHODS)
@pytest.mark.parametrize("tag", ["24x40", "32x32"])
def test_slice_matches_torch_grid_sample(method, tag):
    """The official `Slice` (torch grid_sample, align_corners=True) and its gradients
    (tests/fixtures/README.md), through the same transposition as IHDRNet applies."""
    with np.load(os.path.join(FIXTURES, "bilateral_slice.npz")) as f:
        fx = dict(f)
    grid = fx[f"grid/{tag}"].transpose(0, 3, 4, 2, 1)  # NCDHW -> [B, gh, gw, depth, C]
    guide = fx[f"guide/{tag}"][:, 0]
    cot = fx[f"cotangent/{tag}"].transpose(0, 2, 3, 1)

    def official_slice(g, u):  # the official Slice samples the grid's width axis with image rows
        return ihdrnet.bilateral_slice(jnp.swapaxes(g, 1, 2), u, method)

    out, vjp = jax.vjp(official_slice, jnp.asarray(grid), jnp.asarray(guide))
    grad_grid, grad_guide = vjp(jnp.asarray(cot))
    np.testing.assert_allclose(np.asarray(out), fx[f"out/{tag}"].transpose(0, 2, 3, 1), atol=2e-6)
    np.testing.assert_allclose(np.asarray(grad_grid),
                               fx[f"grad_grid/{tag}"].transpose(0, 3, 4, 2, 1), atol=5e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad_guide), fx[f"grad_guide/{tag}"][:, 0], atol=5e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("method", ihdrnet.SLICE_METHODS)
def test_slice_gradients_match_finite_differences(method):
    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        grid = jnp.asarray(rng.standard_normal((1, 3, 4, 5, 2)))
        # the slice is piecewise linear in the guide, with corners at the bin centres: random
        # values are almost surely more than eps away from them
        guide = jnp.asarray(0.97 * np.tanh(rng.standard_normal((1, 6, 10))))
        check_grads(lambda g, u: ihdrnet.bilateral_slice(g, u, method), (grid, guide), order=1,
                    modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)


def test_slice_under_jit_and_without_agree():
    grid, guide = _random_slice_inputs(2, 2, 3, 3, 4, 12, 16, 24)
    for method in ihdrnet.SLICE_METHODS:
        with jax.disable_jit():
            eager = ihdrnet.bilateral_slice(grid, guide, method)
        np.testing.assert_allclose(eager, jax.jit(ihdrnet.bilateral_slice, static_argnums=2)(
            grid, guide, method), atol=1e-6)


def test_slice_rejects_bad_inputs():
    grid, guide = _random_slice_inputs(3, 1, 2, 2, 3, 12, 8, 8)
    with pytest.raises(ValueError, match=r"grid \[B, gh, gw, depth, C\] and guide \[B, H, W\]"):
        ihdrnet.bilateral_slice(grid[0], guide)
    with pytest.raises(ValueError, match="method 'nearest'"):
        ihdrnet.bilateral_slice(grid, guide, "nearest")
    with pytest.raises(ValueError, match="at least 2 pixels"):
        ihdrnet.bilateral_slice(grid, guide[:, :1])


# ---------------------------------------------------------------- building blocks


def test_central_difference_conv_is_the_official_two_conv_form():
    """conv(x, W) - theta * conv1x1(x, sum of W's taps), computed independently with lax."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 7, 3))
    conv = layers.Conv2d(5, 3, 1, 1, use_bias=False, central_difference=0.7)
    v = conv.init(jax.random.PRNGKey(1), x)
    kernel = v["params"]["kernel"]
    dn = ("NHWC", "HWIO", "NHWC")
    plain = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn)
    diff = jax.lax.conv_general_dilated(x, kernel.sum((0, 1), keepdims=True), (1, 1), "VALID",
                                        dimension_numbers=dn)
    np.testing.assert_allclose(conv.apply(v, x), plain - 0.7 * diff, atol=1e-5)
    with pytest.raises(ValueError, match="odd square kernel padded by k // 2"):
        layers.Conv2d(5, 3, 1, 0, central_difference=0.7).init(jax.random.PRNGKey(1), x)


def test_resnet_block_keeps_the_official_lost_skip_unless_asked():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 8))
    for residual in (False, True):
        block = ihdrnet.ResNetBlock(residual=residual)
        out, state = jax.jit(lambda x, b=block: b.apply(
            b.init(jax.random.PRNGKey(1), x, False), x, False, capture_intermediates=True))(x)
        y = state["intermediates"]["bn2"]["__call__"][0]
        np.testing.assert_allclose(out, jax.nn.relu(y + x if residual else 2 * y), atol=1e-6)


def test_apply_coeffs_is_an_affine_map_of_the_denormalized_pixel():
    rng = np.random.default_rng(4)
    image = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    coeffs = rng.standard_normal((1, 2, 3, 12)).astype(np.float32)
    # the official ApplyCoeffs's constants, whatever the data config says
    rgb = image * np.array([0.229, 0.224, 0.225]) + np.array([0.485, 0.456, 0.406])
    a = coeffs.reshape(1, 2, 3, 3, 4)
    expected = np.stack([(a[..., c, :3] * rgb).sum(-1) + a[..., c, 3] for c in range(3)], -1)
    np.testing.assert_allclose(ihdrnet.apply_coeffs(coeffs, image), expected, atol=1e-5)


# ---------------------------------------------------------------- the whole network


@pytest.fixture(scope="module")
def tiny():
    m = ihdrnet.IHDRNet(**TINY)
    v = jax.jit(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 24, 3)), False))()
    # gamma starts at 0 (official), which hides the attention branch from every gradient
    v["params"]["coeffs"]["sa"]["gamma"] = jnp.full((1,), 0.5)
    return m, v


def test_output_shapes_and_ranges(tiny):
    m, v = tiny
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 24, 3))
    out = jax.jit(lambda v, x: m.apply(v, x, False))(v, x)
    chex.assert_shape(out["retouched"], (2, 16, 24, 3))
    chex.assert_shape(out["guide"], (2, 16, 24, 1))
    chex.assert_shape(out["grid"], (2, 4, 6, 4, 12))
    assert 0 < float(out["retouched"].min()) and float(out["retouched"].max()) < 1
    assert -1 <= float(out["guide"].min()) and float(out["guide"].max()) <= 1
    with pytest.raises(ValueError, match="multiples of 4"):
        jax.eval_shape(lambda x: m.apply(v, x, False), jnp.zeros((1, 18, 24, 3)))
    low = ihdrnet.IHDRNet(**TINY, lowres_size=8)  # any photo size: the grid keeps one size
    out = jax.jit(lambda x: low.apply(low.init(jax.random.PRNGKey(0), x), x))(jnp.zeros((1, 18, 30, 3)))
    chex.assert_shape((out["retouched"], out["grid"]), ((1, 18, 30, 3), (1, 2, 2, 4, 12)))


def test_gradients_reach_every_parameter(tiny, params_without_gradient):
    m, v = tiny
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 16, 24, 3))
    unused = params_without_gradient(m, v, x, lambda out: jnp.sum(jnp.square(out["retouched"] - 0.3)))
    assert not unused, unused


def test_official_parameter_count():
    m = ihdrnet.IHDRNet()
    shapes = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), False))
    assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == OFFICIAL_PARAMS


def _split_stats(flat: np.ndarray, index: dict) -> dict[str, np.ndarray]:
    """{official key: float32 values} of the fixture's concatenated BN statistics."""
    keys, sizes = zip(*index["stored"], strict=True)
    bounds = np.cumsum([0, *sizes])
    return {k: flat[a:b].astype(np.float32) for k, a, b in zip(keys, bounds[:-1], bounds[1:], strict=True)}


def _ihdrnet_fixture():
    with np.load(os.path.join(FIXTURES, "ihdrnet.npz")) as f:
        fx = dict(f)
    index = json.loads(str(fx["index"]))
    weights = {k: synthetic_tensor(k, tuple(s)) for k, s in index["synthetic"].items()}
    return fx, index, weights, _split_stats(fx["stored"], index)


def test_matches_the_official_forward_pass():
    """Official HDRPointwiseNN at full width (tests/fixtures/README.md): I', guide, grid and BN
    statistics, eval and train mode, at 256 x 256 and 48 x 80."""
    fx, index, weights, stored = _ihdrnet_fixture()
    assert index["parameters"] == OFFICIAL_PARAMS
    model = ihdrnet.IHDRNet()
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), False))
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    variables = convert.ihdrnet_variables({**weights, **stored}, target, where="fixture")

    @jax.jit
    def run(v, x):
        ev = model.apply(v, x, False)
        tr, upd = model.apply(v, x, True, mutable=["batch_stats"])
        return ev, tr, upd["batch_stats"]

    for h, w in index["sizes"]:
        tag, s = f"{h}x{w}", index["stride_256"] if h == 256 else 1
        n = 2 * h * w * 3
        x = (synthetic_tensor(f"input/{tag}", (n,)) * np.float32(10)).reshape(2, h, w, 3)
        ev, tr, after = run(variables, jnp.asarray(x))
        for mode, out in (("eval", ev), ("train", tr)):
            np.testing.assert_allclose(np.asarray(out["retouched"])[:, ::s, ::s],
                                       fx[f"{mode}/retouched/{tag}"], atol=1e-4, rtol=0)
            np.testing.assert_allclose(np.asarray(out["guide"])[:, ::s, ::s],
                                       fx[f"{mode}/guide/{tag}"], atol=1e-4, rtol=0)
        if f"eval/grid/{tag}" in fx:
            np.testing.assert_allclose(np.asarray(ev["grid"]), fx[f"eval/grid/{tag}"], atol=1e-4, rtol=1e-4)
        expected = assign(_split_stats(fx[f"after_train/{tag}"], index), target, convert.IHDRNET_RULES,
                          required_prefixes=["batch_stats/"], where="fixture")["batch_stats"]
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-5),
                     after, expected)


def test_importer_lists_missing_unexpected_and_mismatched_keys(tiny):
    _, v = tiny
    target = jax.tree.map(np.asarray, v)
    sd = {"coeffs.splat_features.0.conv.weight": np.zeros((4, 3, 3, 3), np.float32),
          "coeffs.splat_features.1.conv.weight": np.zeros((4, 3, 3, 3), np.float32),  # a max-pool
          "coeffs.sa.gamma": np.zeros((2,), np.float32)}
    with pytest.raises(ConversionError) as e:
        convert.ihdrnet_variables(sd, target)
    msg = str(e.value)
    assert "unexpected source key: coeffs.splat_features.1.conv.weight" in msg
    assert "shape mismatch: coeffs.sa.gamma: (2,) -> params/coeffs/sa/gamma expects (1,)" in msg
    # the missing keys, listed up to a dozen, then counted (the model's leaves but the one filled)
    n_missing = len(jax.tree.leaves(target)) - 1
    assert msg.count("missing (no source key): ") == 12
    assert f"... and {n_missing - 12} more missing" in msg

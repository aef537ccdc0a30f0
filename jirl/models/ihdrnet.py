"""iHDRNet: MadisNet's bilateral-grid colour mapping (Liang et al., AAAI 2022, §3.2 and Fig. 3).

Official code: bcmi/MadisNet-Inharmonious-Region-Localization, `networks/iHDRNet.py`
(`HDRPointwiseNN`, which MadisNet calls as `ihdrnet(img, img)`) and `networks/blocks.py`. The
blocks, named as the paper and the official modules name them:
  * CoefficientNet (official `Coeffs`): a splat path of four central-difference conv blocks, each
    followed by a 2x2 max-pool (16, 32, 64, 128 channels; 1/16 resolution), three ResNetBlocks,
    SelfAttention, and `conv_out`, a 1x1 conv to 12 x 16 channels read as a bilateral grid of
    3x4 affine colour transforms over 16 luma bins: grid[..., l, c] = conv_out[..., 12 l + c].
  * GuideNet (`GuideNN`): two 1x1 convs and a tanh: each pixel's luma coordinate in (-1, 1).
  * `bilateral_slice` (`Slice`): trilinear sampling of the grid at (pixel position, guide), as
    `F.grid_sample(grid, ..., align_corners=True)` samples a 5-D grid.
  * `apply_coeffs` (`ApplyCoeffs`): each pixel's 3x4 affine map applied to its de-normalized RGB.
The output I' = sigmoid(mapped RGB) lies in (0, 1) and is NOT ImageNet-normalized: that is the
image MadisNet's localizer sees.

Official quirks kept, so that the official weights give the official I':
  * ResNetBlock overwrites its input before the skip (`res = self.adapt(x)` after x was
    reassigned), so it returns relu(2 bn2(conv2(...))) with no skip. `residual=True` gives the
    evidently intended relu(bn2(...) + x) instead (then the official weights do not apply).
  * The first splat conv has BN although the official constructor passes use_bn=False: its
    `Conv2d_cd` ignores that argument.
  * The slice's sampling points are (row, column, guide) in grid_sample's (x, y, z) order, and x
    indexes a grid's last (width) axis: the image row indexes the grid's width axis and the
    column its height axis, so the coefficients computed at low-res position (i, j) are applied
    around pixel (j, i). `transposed_grid=True` (the official) reproduces that; False aligns
    them (then the official weights do not apply).
  * `HDRPointwiseNN.clip` clamps I' to the normalized image range, a no-op on sigmoid outputs:
    omitted. The first `conv_out` Sequential is overwritten in the official constructor: only
    the 1x1 conv exists (there are no weights for the other).
"""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jirl.models import from_config
from jirl.models.layers import BatchNorm, Conv2d, ConvBlock, Dtype, max_pool, stat_dtype
from jirl.normalization import IMAGENET_MEAN, IMAGENET_STD, denormalize

Array = jax.Array

AFFINE_ROWS, AFFINE_COLS = 3, 4  # each grid cell holds a 3x4 affine colour transform
SLICE_METHODS = ("gather", "onehot")


# ------------------------------------------------------------------------------------------------
# The bilateral slice


def _grid_positions(n: int, size: int, dtype) -> np.ndarray:
    """Continuous grid indices of `n` evenly spaced samples, computed as the official code does.

    `Slice` normalizes pixel i to i / (n - 1) * 2 - 1 in float32, and grid_sample(align_corners=
    True) maps a coordinate u to ((u + 1) / 2) * (size - 1) in the grid's precision (`dtype`):
    the same steps here, so float32 and float64 runs both reproduce the official positions.
    """
    if n < 2:
        raise ValueError(f"the bilateral slice needs at least 2 pixels per axis, got {n}")
    i = np.arange(n, dtype=np.float32)
    u = (i / np.float32(n - 1) * np.float32(2) - np.float32(1)).astype(dtype)
    return (u + dtype.type(1)) / dtype.type(2) * dtype.type(size - 1)


def _linear_corners(pos: Array, size: int) -> tuple[tuple[Array, Array], ...]:
    """The two corners of linear interpolation at `pos`: ((index, weight), (index + 1, weight)).

    A corner outside [0, size) reads zero, as grid_sample's zeros padding does (its weight is
    zeroed, so neither the value nor the gradient sees it); its index is clamped for the gather.
    """
    lo = jnp.floor(pos)
    frac = pos - lo
    lo = lo.astype(jnp.int32)
    corners = []
    for idx, w in ((lo, 1 - frac), (lo + 1, frac)):
        inside = (idx >= 0) & (idx < size)
        corners.append((jnp.clip(idx, 0, size - 1), jnp.where(inside, w, 0)))
    return tuple(corners)


def _linear_weights(pos: np.ndarray, size: int) -> np.ndarray:
    """[n, size] float64 matrix of the linear-interpolation weights at fixed positions `pos`."""
    lo = np.floor(pos.astype(np.float64))
    frac = pos.astype(np.float64) - lo
    w = np.zeros((pos.shape[0], size))
    for idx, wt in ((lo, 1 - frac), (lo + 1, frac)):
        inside = (idx >= 0) & (idx < size)
        w[np.arange(pos.shape[0])[inside], idx[inside].astype(np.int64)] += wt[inside]
    return w


def _slice_gather(grid: Array, rows: np.ndarray, cols: np.ndarray, luma: Array) -> Array:
    """Trilinear slice by gathering the 8 corner cells of every pixel."""
    b, gh, gw, depth, c = grid.shape
    h, w = luma.shape[1:]
    flat = grid.reshape(b, gh * gw * depth, c)
    out = jnp.zeros((b, h, w, c), grid.dtype)
    for yi, wy in _linear_corners(jnp.asarray(rows), gh):
        for xi, wx in _linear_corners(jnp.asarray(cols), gw):
            spatial = (yi[:, None] * gw + xi[None, :]) * depth  # [H, W]
            for zi, wz in _linear_corners(luma, depth):
                idx = (spatial[None] + zi).reshape(b, h * w)
                cell = jax.vmap(lambda f, i: f[i])(flat, idx).reshape(b, h, w, c)
                weight = wy[None, :, None] * wx[None, None, :] * wz
                out = out + weight[..., None].astype(grid.dtype) * cell
    return out


def _slice_onehot(grid: Array, rows: np.ndarray, cols: np.ndarray, luma: Array) -> Array:
    """Trilinear slice as matrix products: fixed spatial interpolation matrices, then a per-pixel
    two-hot weighting of the luma bins."""
    depth = grid.shape[3]
    wy = jnp.asarray(_linear_weights(rows, grid.shape[1]), grid.dtype)  # [H, gh]
    wx = jnp.asarray(_linear_weights(cols, grid.shape[2]), grid.dtype)  # [W, gw]
    spatial = jnp.einsum("yi,bijlc->byjlc", wy, grid)
    spatial = jnp.einsum("xj,byjlc->byxlc", wx, spatial)  # [B, H, W, depth, C]
    lo = jnp.floor(luma)
    frac = (luma - lo)[..., None]
    lo = lo.astype(jnp.int32)
    # one_hot of an index outside [0, depth) is all zeros: zeros padding
    wz = (1 - frac) * jax.nn.one_hot(lo, depth, dtype=grid.dtype) + frac * jax.nn.one_hot(
        lo + 1, depth, dtype=grid.dtype)
    return jnp.einsum("byxl,byxlc->byxc", wz, spatial)


def bilateral_slice(grid: Array, guide: Array, method: str = "gather") -> Array:
    """Trilinear sampling of a bilateral grid at every pixel (HDRNet's slicing layer, Gharbi et al.
    2017 §3.3; MadisNet §3.2).

    grid: [B, gh, gw, depth, C]; guide: [B, H, W] in [-1, 1]. Pixel (i, j) samples the grid at
    height position i / (H - 1) * (gh - 1), width position j / (W - 1) * (gw - 1) and luma
    position (guide + 1) / 2 * (depth - 1), with trilinear weights: exactly
    `F.grid_sample(grid_NCDHW, stack([j_norm, i_norm, guide]), 'bilinear', align_corners=True)`,
    zeros padding included. Differentiable in grid and guide. Returns [B, H, W, C].

    `method` picks the formulation: "gather" reads the 8 corner cells of every pixel; "onehot"
    interpolates the grid spatially with two fixed matrices, then weights the luma bins (more
    FLOPs and a [B, H, W, depth, C] intermediate, but only dense products).
    `benchmarks/bilateral_slice.py` compares the two.
    """
    if grid.ndim != 5 or guide.ndim != 3 or guide.shape[0] != grid.shape[0]:
        raise ValueError(f"bilateral_slice needs grid [B, gh, gw, depth, C] and guide [B, H, W], "
                         f"got {grid.shape} and {guide.shape}")
    b, gh, gw, depth, _ = grid.shape
    h, w = guide.shape[1:]
    precision = np.dtype(jnp.promote_types(grid.dtype, jnp.float32))
    rows, cols = _grid_positions(h, gh, precision), _grid_positions(w, gw, precision)
    luma = (guide.astype(stat_dtype(guide.dtype)) + 1) / 2 * (depth - 1)
    if method == "gather":
        return _slice_gather(grid, rows, cols, luma)
    if method == "onehot":
        return _slice_onehot(grid, rows, cols, luma)
    raise ValueError(f"bilateral_slice method {method!r}; use one of {SLICE_METHODS}")


def apply_coeffs(coeffs: Array, image: Array) -> Array:
    """Official `ApplyCoeffs`: out_c = sum_k A[c, k] rgb_k + A[c, 3] per pixel, where rgb is the
    input de-normalized with ImageNet's statistics (fixed in the official code, whatever the data
    config says) in [0, 1], and coeffs [B, H, W, 12] hold A row by row."""
    rgb = denormalize(image, IMAGENET_MEAN, IMAGENET_STD, dtype=image.dtype)
    a = coeffs.reshape(*coeffs.shape[:-1], AFFINE_ROWS, AFFINE_COLS)
    return jnp.einsum("...ck,...k->...c", a[..., :3], rgb) + a[..., 3]


# ------------------------------------------------------------------------------------------------
# The networks


class CentralDifferenceBlock(nn.Module):
    """Official `blocks.Conv2d_cd` (§3.2: central-difference convolution, theta = 0.7): conv3x3
    without bias whose output is reduced by theta x the 1x1 conv of its summed taps, BN, ReLU."""

    features: int
    theta: float = 0.7
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        x = Conv2d(self.features, 3, 1, 1, use_bias=False, central_difference=self.theta,
                   dtype=self.dtype, name="conv")(x)
        return nn.relu(BatchNorm(dtype=self.dtype, name="bn")(x, train))


class ResNetBlock(nn.Module):
    """Official `blocks.ResNetBlock`: conv3x3 (x1.5 channels) -> BN -> ReLU -> conv3x3 -> BN, whose
    skip is lost (relu(2 y)); `residual` restores the intended relu(y + x)."""

    residual: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        c = x.shape[-1]
        y = Conv2d(int(c * 1.5), 3, 1, 1, use_bias=False, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(y, train))
        y = Conv2d(c, 3, 1, 1, use_bias=False, dtype=self.dtype, name="conv2")(y)
        y = BatchNorm(dtype=self.dtype, name="bn2")(y, train)
        return nn.relu(y + (x if self.residual else y))


class SelfAttention(nn.Module):
    """Official `SelfAttention` (SAGAN-style): softmax(q k^T / sqrt(C/8)) v over all positions,
    added back as gamma * out + x with gamma initialized to 0."""

    reduction: int = 8
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, h, w, c = x.shape
        inner = c // self.reduction
        q = Conv2d(inner, 1, dtype=self.dtype, name="query_conv")(x).reshape(b, h * w, inner)
        k = Conv2d(inner, 1, dtype=self.dtype, name="key_conv")(x).reshape(b, h * w, inner)
        v = Conv2d(c, 1, dtype=self.dtype, name="value_conv")(x).reshape(b, h * w, c)
        energy = jnp.einsum("bnd,bmd->bnm", q, k).astype(stat_dtype(self.dtype))
        attention = jax.nn.softmax(energy / math.sqrt(inner), axis=-1).astype(self.dtype)
        out = jnp.einsum("bnm,bmc->bnc", attention, v).reshape(b, h, w, c)
        gamma = self.param("gamma", nn.initializers.zeros, (1,))
        return (gamma * out + x).astype(self.dtype)


class CoefficientNet(nn.Module):
    """Official `Coeffs` (Fig. 3, top): image -> bilateral grid [B, H/16, W/16, luma_bins, 12]."""

    luma_bins: int = 16
    channel_multiplier: int = 1
    splat_layers: int = 4  # log2(net_input_size / spatial_bin) = log2(256 / 16) officially
    theta: float = 0.7
    residual: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        for i in range(self.splat_layers):
            features = self.channel_multiplier * (2**i) * self.luma_bins
            x = CentralDifferenceBlock(features, self.theta, self.dtype, name=f"splat_{i}")(x, train)
            x = max_pool(x, 2, 2, 0)
        for i in range(3):
            x = ResNetBlock(self.residual, self.dtype, name=f"res_{i}")(x, train)
        x = SelfAttention(dtype=self.dtype, name="sa")(x)
        cells = AFFINE_ROWS * AFFINE_COLS
        x = Conv2d(self.luma_bins * cells, 1, dtype=self.dtype, name="conv_out")(x)
        return x.reshape(*x.shape[:3], self.luma_bins, cells)


class GuideNet(nn.Module):
    """Official `GuideNN` (Fig. 3, bottom): 1x1 conv -> BN -> ReLU -> 1x1 conv -> tanh."""

    features: int = 16
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        x = ConvBlock(self.features, 1, 1, 0, dtype=self.dtype, name="conv1")(x, train)
        x = ConvBlock(1, 1, 1, 0, norm=False, activation="tanh", dtype=self.dtype,
                      name="conv2")(x, train)
        return x[..., 0]


class IHDRNet(nn.Module):
    """iHDRNet (official `HDRPointwiseNN`): ImageNet-normalized image [B,H,W,3] -> I' in (0, 1).

    Returns {"retouched": I' [B,H,W,3], "guide": [B,H,W,1], "grid": [B, H/16, W/16, bins, 12]}.
    The coefficient net sees the same image as the guide (official `ihdrnet(img, img)`), unless
    `lowres_size` is set: then it sees the image resized to lowres_size^2 (HDRNet's fixed
    low-resolution input), so the grid keeps one size for photos of any size. H and W must be
    multiples of 2**splat_layers (16) when lowres_size is not set.
    """

    luma_bins: int = 16
    channel_multiplier: int = 1
    splat_layers: int = 4
    theta: float = 0.7
    residual: bool = False
    transposed_grid: bool = True
    lowres_size: int | None = None
    slice_method: str = "gather"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, train: bool = False) -> dict:
        b, h, w, _ = image.shape
        lowres = image
        if self.lowres_size:
            lowres = jax.image.resize(image, (b, self.lowres_size, self.lowres_size, 3), "linear")
        stride = 2**self.splat_layers
        if lowres.shape[1] % stride or lowres.shape[2] % stride:
            raise ValueError(f"IHDRNet: image sides must be multiples of {stride}, got "
                             f"{lowres.shape[1:3]} (or set lowres_size)")
        grid = CoefficientNet(self.luma_bins, self.channel_multiplier, self.splat_layers,
                              self.theta, self.residual, self.dtype, name="coeffs")(lowres, train)
        guide = GuideNet(dtype=self.dtype, name="guide")(image, train)
        precise = stat_dtype(self.dtype)
        sampled = jnp.swapaxes(grid, 1, 2) if self.transposed_grid else grid
        coeffs = bilateral_slice(sampled.astype(precise), guide.astype(precise), self.slice_method)
        retouched = jax.nn.sigmoid(apply_coeffs(coeffs, image.astype(precise)))
        chex.assert_shape(retouched, (b, h, w, 3))
        return {"retouched": retouched.astype(self.dtype), "guide": guide[..., None], "grid": grid}


def build(cfg: ml_collections.ConfigDict, dtype: Dtype = jnp.float32) -> IHDRNet:
    """IHDRNet from a config dict of its fields (luma_bins, theta, residual, ...)."""
    return from_config(IHDRNet, cfg, dtype)

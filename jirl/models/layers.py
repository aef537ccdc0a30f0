"""PyTorch-compatible building blocks shared by every jirl model (NHWC, HWIO kernels).

Each op here reproduces the numerics of the PyTorch op named in its docstring, so that official
checkpoints can be imported and give the official outputs. Getting these right once is the point
of this file: models never re-implement a resize, a normalization or a padding rule.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
Array = jax.Array

ACTIVATIONS: dict[str, Callable[[Array], Array] | None] = {
    "relu": nn.relu,
    "lrelu": functools.partial(nn.leaky_relu, negative_slope=0.2),
    "tanh": jnp.tanh,
    "none": None,
}


def stat_dtype(dtype: Dtype) -> Dtype:
    """The dtype for statistics and gates: at least float32 (bf16 compute keeps f32 statistics)."""
    return jnp.promote_types(dtype, jnp.float32)


def _torch_uniform(bound: float) -> Callable:
    """Uniform(-bound, bound) initializer: PyTorch's default for conv kernels and biases."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Conv2d(nn.Module):
    """`torch.nn.Conv2d` with zero padding, HWIO kernel and PyTorch's default initialization."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, cin = self.kernel_size, x.shape[-1]
        bound = 1.0 / math.sqrt(cin * k * k)
        kernel = self.param("kernel", _torch_uniform(bound), (k, k, cin, self.features))
        p = self.padding
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            kernel.astype(self.dtype),
            window_strides=(self.stride, self.stride),
            padding=((p, p), (p, p)),
            rhs_dilation=(self.dilation, self.dilation),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.use_bias:
            bias = self.param("bias", _torch_uniform(bound), (self.features,))
            y = y + bias.astype(self.dtype)
        return y


class BatchNorm(nn.Module):
    """`torch.nn.BatchNorm2d`: batch statistics in training, running statistics in eval.

    `momentum` is PyTorch's (weight of the new batch). The running variance is updated with the
    unbiased batch variance, as PyTorch does; normalization uses the biased one. Statistics are
    computed in at least float32 (`stat_dtype`). Under `jax.jit` with a batch-sharded input the
    means are taken over the global batch, which is SyncBatchNorm.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        xf = x.astype(stat_dtype(self.dtype))
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xf, axes)
            var = jnp.mean(jnp.square(xf - mean), axes)
            if not self.is_initializing():
                n = math.prod(x.shape[:-1])
                unbiased = var * (n / max(n - 1, 1))
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * mean
                ra_var.value = (1 - m) * ra_var.value + m * unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(self.dtype)


class ConvBlock(nn.Module):
    """Conv2d -> BN -> activation, or activation -> Conv2d -> BN (`Conv2dBlock`, activation_first)."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    use_bias: bool = True
    norm: bool = True
    activation: str = "relu"
    activation_first: bool = False
    bn_momentum: float = 0.1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        act = ACTIVATIONS[self.activation]
        if self.activation_first and act is not None:
            x = act(x)
        x = Conv2d(
            self.features, self.kernel_size, self.stride, self.padding,
            use_bias=self.use_bias, dtype=self.dtype, name="conv",
        )(x)
        if self.norm:
            x = BatchNorm(momentum=self.bn_momentum, dtype=self.dtype, name="bn")(x, train)
        if not self.activation_first and act is not None:
            x = act(x)
        return x


def max_pool(x: Array, window: int = 3, stride: int = 2, padding: int = 1) -> Array:
    """`torch.nn.MaxPool2d(window, stride, padding)` (padding with -inf)."""
    return nn.max_pool(
        x, (window, window), strides=(stride, stride), padding=((padding, padding),) * 2
    )


def upsample_nearest2x(x: Array) -> Array:
    """`F.interpolate(x, scale_factor=2)` (mode 'nearest'): every pixel repeated 2x2."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


@functools.lru_cache(maxsize=256)
def _interp_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
    """[n_out, n_in] matrix of 1-D linear interpolation weights with PyTorch's coordinate rule."""
    if align_corners:
        scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        src = np.arange(n_out, dtype=np.float64) * scale
    else:
        src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        src = np.maximum(src, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    w = np.zeros((n_out, n_in), np.float64)
    np.add.at(w, (np.arange(n_out), lo), 1.0 - frac)
    np.add.at(w, (np.arange(n_out), hi), frac)
    return w


def resize_bilinear(x: Array, size: Sequence[int], align_corners: bool) -> Array:
    """`F.interpolate(x, size, mode='bilinear', align_corners=...)` on NHWC input.

    Separable: one small interpolation matrix per axis. `jax.image.resize` is not used because it
    has no align_corners mode and anti-aliases when downsampling, which PyTorch does not.
    """
    h, w = int(size[0]), int(size[1])
    wh = jnp.asarray(_interp_matrix(x.shape[1], h, align_corners), x.dtype)
    ww = jnp.asarray(_interp_matrix(x.shape[2], w, align_corners), x.dtype)
    x = jnp.einsum("oh,bhwc->bowc", wh, x)
    return jnp.einsum("pw,bowc->bopc", ww, x)


def upsample_bilinear2x(x: Array) -> Array:
    """`nn.Upsample(scale_factor=2, mode='bilinear', align_corners=True)`."""
    return resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]), align_corners=True)

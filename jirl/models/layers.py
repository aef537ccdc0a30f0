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

from jirl.models.cpu_conv import conv2d, xla_conv

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


def _initializers(fan_in: int, init_std: float | None) -> tuple[Callable, Callable]:
    """(kernel, bias) initializers: PyTorch's default uniform(+-1/sqrt(fan_in)) for both, or the
    pix2pix-family `init_weights('normal', init_std)`: N(0, init_std) kernel, zero bias."""
    if init_std is None:
        bound = 1.0 / math.sqrt(fan_in)
        return _torch_uniform(bound), _torch_uniform(bound)
    return nn.initializers.normal(init_std), nn.initializers.zeros


def _l2_normalize(x: Array, eps: float) -> Array:
    """`F.normalize(x, dim=0, eps)`: x / max(||x||, eps)."""
    return x / jnp.maximum(jnp.linalg.norm(x), eps)


def spectral_normalize(module: nn.Module, kernel: Array, update_stats: bool,
                       eps: float = 1e-12) -> Array:
    """kernel / sigma, `torch.nn.utils.spectral_norm` with one power iteration (Miyato et al., 2018).

    Torch's weight matrix is the kernel as [out, in * kh * kw]; its buffers `weight_u` [out] and
    `weight_v` [in * kh * kw] are the variables "sn_u" / "sn_v" of `module`'s "batch_stats"
    collection. With `update_stats` (torch's training mode) each call runs one power iteration
    from the stored u (v = W^T u / |.|, u = W v / |.|), stores both, and uses them; without it
    (eval mode) the stored u and v are used as they are. sigma = u . W v, differentiated through
    W only. `flax.linen.SpectralNorm` differs on the second point (it iterates in eval mode too
    and stores no v), so official eval-mode outputs and imported buffers need this version.
    """
    out = kernel.shape[-1]
    w = kernel.transpose(3, 2, 0, 1).reshape(out, -1) if kernel.ndim == 4 else kernel.T
    dtype = stat_dtype(w.dtype)

    def unit(key, n):
        return _l2_normalize(jax.random.normal(key, (n,), dtype), eps)

    init = module.is_initializing()
    u_var = module.variable("batch_stats", "sn_u", unit,
                            module.make_rng("params") if init else None, out)
    v_var = module.variable("batch_stats", "sn_v", unit,
                            module.make_rng("params") if init else None, w.shape[1])
    u, v = u_var.value, v_var.value
    if update_stats:
        w_const = jax.lax.stop_gradient(w).astype(dtype)
        v = _l2_normalize(w_const.T @ u, eps)
        u = _l2_normalize(w_const @ v, eps)
        if not init:
            u_var.value, v_var.value = u, v
    sigma = jnp.dot(u, w.astype(dtype) @ v)
    return (kernel / sigma.astype(kernel.dtype)).astype(kernel.dtype)


# For output row 2i + a of a 3x3 conv over a nearest-x2-upsampled input, the kernel rows (k0, k1,
# k2) that read input rows i - 1, i, i + 1: a = 0 -> (k0, k1 + k2, 0), a = 1 -> (0, k0 + k1, k2).
_PHASE_TAPS = np.array([[[1, 0, 0], [0, 1, 1], [0, 0, 0]],
                        [[0, 0, 0], [1, 1, 0], [0, 0, 1]]], np.float32)  # [a, tap, k]


def conv3x3_of_upsample_nearest2x(x: Array, kernel: Array) -> Array:
    """conv3x3(upsample_nearest2x(x), kernel), padding 1, without building the upsampled input.

    Each of the four output phases (row parity a, column parity b) is a 3x3 conv of x with summed
    kernel taps, so all four are one conv with 4x the output channels, then a depth-to-space.
    Exact up to float summation order. The 4x-larger upsampled activation is never built nor kept
    for the backward pass.
    """
    return _phased_conv(x, kernel, _PHASE_TAPS)


def _phased_conv(x: Array, kernel: Array, phase_taps: np.ndarray) -> Array:
    """An op whose output pixel (2i + a, 2j + b) is a 3x3 conv of x around (i, j) with the
    kernel taps `phase_taps[a]` x `phase_taps[b]` ([2, 3, k] weights over the k kernel rows):
    all four phases as one conv with 4x the output channels, then a depth-to-space."""
    b, h, w, cin = x.shape
    cout = kernel.shape[-1]
    taps = jnp.asarray(phase_taps, kernel.dtype)
    phased = jnp.einsum("ayk,bxl,klio->yxioab", taps, taps, kernel).reshape(3, 3, cin, cout * 4)
    y = conv2d(x, phased, 1, 1)  # channel = (o, a, b)
    y = y.reshape(b, h, w, cout, 2, 2).transpose(0, 1, 4, 2, 5, 3)  # [B, H, a, W, b, cout]
    return y.reshape(b, 2 * h, 2 * w, cout)


@jax.custom_vjp
def add_bias(y: Array, bias: Array) -> Array:
    """y + bias over the last axis, in y's dtype; the bias gradient is summed in >= float32.

    The bias gradient reduces the output gradient over every batch row and pixel: in bf16 (8
    mantissa bits) that sum would lose most of its value.
    """
    return y + bias.astype(y.dtype)


def _add_bias_fwd(y, bias):
    return add_bias(y, bias), bias


def _add_bias_bwd(bias, g):
    db = jnp.sum(g.astype(stat_dtype(g.dtype)), axis=tuple(range(g.ndim - 1)))
    return g, db.astype(bias.dtype)


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def central_difference_kernel(kernel: Array, theta: float, padding: int) -> Array:
    """The one kernel of a central-difference conv (Yu et al., CVPR 2020; MadisNet's `Conv2d_cd`).

    The official op is conv(x, W) - theta * conv1x1(x, sum of W over its taps); with an odd
    square kernel padded by k // 2, the 1x1 term reads the centre tap's input, so the two are
    one conv whose centre tap is W_centre - theta * sum(W): one pass instead of two.
    """
    k = kernel.shape[0]
    if kernel.shape[1] != k or k % 2 == 0 or padding != k // 2:
        raise ValueError("a central-difference conv needs an odd square kernel padded by k // 2")
    return kernel.at[k // 2, k // 2].add(-theta * kernel.sum(axis=(0, 1)))


class Conv2d(nn.Module):
    """`torch.nn.Conv2d` with zero padding, HWIO kernel and PyTorch's default initialization."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    upsample_input: bool = False  # convolve upsample_nearest2x(x) (3x3, stride 1, padding 1 only)
    central_difference: float = 0.0  # theta of a central-difference conv (see below)
    init_std: float | None = None  # None: PyTorch's default init; else N(0, init_std), zero bias
    spectral_norm: bool = False  # `torch.nn.utils.spectral_norm` (see `spectral_normalize`)

    @nn.compact
    def __call__(self, x: Array, update_stats: bool = False) -> Array:
        k, cin = self.kernel_size, x.shape[-1]
        kernel_init, bias_init = _initializers(cin * k * k, self.init_std)
        kernel = self.param("kernel", kernel_init, (k, k, cin, self.features))
        if self.spectral_norm:
            kernel = spectral_normalize(self, kernel, update_stats)
        if self.central_difference:
            kernel = central_difference_kernel(kernel, self.central_difference, self.padding)
        if self.upsample_input:
            if (k, self.stride, self.padding, self.dilation) != (3, 1, 1, 1):
                raise ValueError("upsample_input needs a 3x3 conv with stride 1 and padding 1")
            y = conv3x3_of_upsample_nearest2x(x.astype(self.dtype), kernel.astype(self.dtype))
        else:
            y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding,
                       self.dilation)
        if self.use_bias:
            bias = self.param("bias", bias_init, (self.features,))
            y = add_bias(y, bias)
        return y


class PartialConv2d(nn.Module):
    """Partial convolution (Liu et al., ECCV 2018; NVIDIA's `PartialConv2d`, single-channel mask,
    `return_mask=True`, as MadisNet's `blocks.PartialConv2d` and RainNet's discriminator run it):
    (x, mask) -> (y, mask').

    y = (conv(x * mask) * r + bias) * mask' with r = k^2 / (window sum of mask + 1e-8) * mask',
    mask' = clip(window sum of mask, 0, 1); without a bias, y = conv(x * mask) * r. A mask of
    None is torch's `mask_in=None`: x is not masked and the mask is all ones. `frozen` stops the
    gradient to the kernel and bias (MadisNet's fixed VGG16 layers): nothing is computed for them
    in the backward pass. `spectral_norm` wraps the kernel as `spectral_normalize` describes.
    """

    features: int
    kernel_size: int = 3
    padding: int = 1
    use_bias: bool = True
    frozen: bool = False
    stride: int = 1
    init_std: float | None = None  # None: PyTorch's default init; else N(0, init_std), zero bias
    spectral_norm: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None,
                 update_stats: bool = False) -> tuple[Array, Array]:
        k, cin = self.kernel_size, x.shape[-1]
        kernel_init, bias_init = _initializers(cin * k * k, self.init_std)
        kernel = self.param("kernel", kernel_init, (k, k, cin, self.features))
        bias = self.param("bias", bias_init, (self.features,)) if self.use_bias else None
        if self.frozen:
            kernel, bias = jax.lax.stop_gradient((kernel, bias))
        if self.spectral_norm:
            kernel = spectral_normalize(self, kernel, update_stats)
        if mask is None:
            mask = jnp.ones((1, *x.shape[1:3], 1), stat_dtype(self.dtype))
        else:
            x = x * mask.astype(x.dtype)
        mask = mask.astype(stat_dtype(self.dtype))
        window = xla_conv(mask, jnp.ones((k, k, 1, 1), mask.dtype), self.stride, self.padding, 1)
        update = jnp.clip(window, 0, 1)
        ratio = (k * k) / (window + 1e-8) * update
        y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding)
        y = y * ratio.astype(self.dtype)
        if bias is not None:
            y = (y + bias.astype(self.dtype)) * update.astype(self.dtype)
        return y, update


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: Array, scale: Array, bias: Array, epsilon: float) -> tuple[Array, ...]:
    """Training-mode batch normalization over all but the last axis -> (y, mean, biased var).

    Same values as autodiff of the textbook formula, with the closed-form backward pass (Ioffe &
    Szegedy 2015, §3), which needs only x from the forward pass: autodiff would also keep
    x - mean, one more activation-sized tensor per normalization layer.
    """
    return _batch_norm_fwd(x, scale, bias, epsilon)[0]


def _batch_norm_fwd(x, scale, bias, epsilon):
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    var = jnp.mean(jnp.square(x - mean), axes)
    inv = jax.lax.rsqrt(var + epsilon)
    return ((x - mean) * (inv * scale) + bias, mean, var), (x, mean, inv, scale)


def _batch_norm_bwd(epsilon, residuals, cotangents):
    del epsilon
    x, mean, inv, scale = residuals
    g, g_mean, g_var = cotangents
    axes = tuple(range(x.ndim - 1))
    n = math.prod(x.shape[:-1])
    # x * inv - mean * inv rather than (x - mean) * inv: written differently from the forward
    # pass's x - mean on purpose, so that XLA cannot share (and keep alive) that tensor.
    xhat = x * inv - mean * inv
    g_sum = jnp.sum(g, axes)
    g_xhat_sum = jnp.sum(g * xhat, axes)
    dx = (scale * inv) * (g - (g_sum + xhat * g_xhat_sum) / n)
    dx = dx + (g_mean + 2.0 * g_var * xhat / inv) / n  # mean and var are outputs too
    return dx, g_xhat_sum, g_sum


batch_norm_train.defvjp(_batch_norm_fwd, _batch_norm_bwd)


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
            y, mean, var = batch_norm_train(xf, scale, bias, self.epsilon)
            if not self.is_initializing():
                n = math.prod(x.shape[:-1])
                unbiased = var * (n / max(n - 1, 1))
                m = self.momentum
                ra_mean.value = (1 - m) * ra_mean.value + m * mean
                ra_var.value = (1 - m) * ra_var.value + m * unbiased
            return y.astype(self.dtype)
        mean, var = ra_mean.value, ra_var.value
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(self.dtype)


class ConvBlock(nn.Module):
    """Conv2d -> BN -> activation, or activation -> Conv2d -> BN (`Conv2dBlock`, activation_first).

    With `upsample_input` the block computes the same as on upsample_nearest2x(x), faster: the
    activation commutes with nearest upsampling, and Conv2d fuses the upsampling (only for
    activation_first blocks, where that holds trivially).
    """

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
    upsample_input: bool = False  # the conv reads upsample_nearest2x(x) (see Conv2d)

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        act = ACTIVATIONS[self.activation]
        if self.activation_first and act is not None:
            x = act(x)
        x = Conv2d(
            self.features, self.kernel_size, self.stride, self.padding,
            use_bias=self.use_bias, dtype=self.dtype, upsample_input=self.upsample_input,
            name="conv",
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


def resize_nearest(x: Array, size: Sequence[int]) -> Array:
    """`F.interpolate(x, size, mode='nearest')` on NHWC input: source index floor(i * in / out)."""
    rows = np.minimum(np.floor(np.arange(size[0]) * (x.shape[1] / size[0])).astype(int),
                      x.shape[1] - 1)
    cols = np.minimum(np.floor(np.arange(size[1]) * (x.shape[2] / size[1])).astype(int),
                      x.shape[2] - 1)
    return x[:, rows][:, :, cols]


def instance_norm(x: Array, eps: float = 1e-5) -> Array:
    """`nn.InstanceNorm2d(affine=False)`: per sample and channel over H, W, biased variance;
    statistics in at least float32."""
    xs = x.astype(stat_dtype(x.dtype))
    mean = jnp.mean(xs, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(xs - mean), axis=(1, 2), keepdims=True)
    return ((xs - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def conv_transpose4x4_stride2(x: Array, kernel: Array) -> Array:
    """`F.conv_transpose2d(x, w, stride=2, padding=1)` for a 4x4 kernel, kernel[ky, kx, i, o] =
    w[i, o, ky, kx], as PyTorch computes it on CPU: one matmul of every input pixel with the
    whole kernel ([B, H, W, 4, 4, out] columns), then an overlap-add (col2im) of the 4x4 patches
    at stride 2, cropped by the padding. On XLA:CPU this beats a dilated-input conv and a phased
    3x3 conv, forward and backward, when the images are small and the channels many (RainNet's
    codec blocks: 1x1 to 16x16, 512-1024 channels)."""
    b, h, w, _ = x.shape
    cout = kernel.shape[-1]
    # kernel row ky = 2 qy + ry lands on output row 2 (i + qy) + ry (before the crop); same for x
    cols = jnp.einsum("bhwi,yxio->bhwyxo", x, kernel).reshape(b, h, w, 2, 2, 2, 2, cout)
    out = sum(jnp.pad(cols[:, :, :, qy, :, qx], ((0, 0), (qy, 1 - qy), (qx, 1 - qx), (0, 0),
                                                 (0, 0), (0, 0)))
              for qy in (0, 1) for qx in (0, 1))  # [B, H + 1, W + 1, ry, rx, out]
    out = out.transpose(0, 1, 3, 2, 4, 5).reshape(b, 2 * h + 2, 2 * w + 2, cout)
    return out[:, 1:-1, 1:-1]


class ConvTranspose2d(nn.Module):
    """`torch.nn.ConvTranspose2d(cin, features, kernel_size=4, stride=2, padding=1)`: doubles H, W.

    The kernel is stored [ky, kx, in, out] (torch's weight [in, out, ky, kx] transposed), the
    initialization is PyTorch's default (fan-in = out * 16, as torch computes it for a transposed
    weight) or N(0, init_std) with a zero bias.
    """

    features: int
    use_bias: bool = True
    init_std: float | None = None
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel_init, bias_init = _initializers(self.features * 16, self.init_std)
        kernel = self.param("kernel", kernel_init, (4, 4, x.shape[-1], self.features))
        y = conv_transpose4x4_stride2(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            y = add_bias(y, self.param("bias", bias_init, (self.features,)))
        return y

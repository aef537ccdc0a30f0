"""The convolution every jirl layer runs: XLA's on accelerators, CPU kernels on the CPU.

XLA:CPU computes the kernel gradient of a convolution with convolutions of its own that cost
several times the forward pass, and a bf16 convolution in f32 (upcasting both operands). On the
CPU, `conv2d` therefore differentiates the kernel tap by tap as matrix products, computes the
input gradient of a strided (or 1x1) conv as a matrix product and an overlap-add, and runs an
undifferentiated bf16 forward as bf16 x bf16 -> f32 matrix products per kernel tap, which use
the CPU's bf16 units. Where XLA's own conv is slow for the shape (1x1 kernels, outputs of at
most 8 x 8 pixels with wide patches: `_prefers_im2col`), the forward is one matrix product of
the im2col patches.
The values are XLA's convolution's, up to float summation order; the speed-ups are measured by
benchmarks/conv_kernels.py, benchmarks/train_step.py and benchmarks/compare_official.py
(docs/performance.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


def conv2d(x: Array, kernel: Array, stride: int = 1, padding: int = 0, dilation: int = 1) -> Array:
    """NHWC x HWIO convolution with symmetric zero padding (`F.conv2d` semantics, no bias): on
    CPU with the tap-wise kernel gradient (`_conv_tapwise_grad`), elsewhere XLA's conv."""
    if jax.default_backend() == "cpu":
        return _conv_tapwise_grad(x, kernel, stride, padding, dilation)
    return xla_conv(x, kernel, stride, padding, dilation)


def xla_conv(x: Array, kernel: Array, stride: int, padding: int, dilation: int) -> Array:
    """XLA's own convolution (NHWC x HWIO, symmetric zero padding)."""
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=((padding, padding),) * 2,
        rhs_dilation=(dilation, dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _tap_windows(x: Array, kh: int, kw: int, stride: int, padding: int,
                 dilation: int) -> list[Array]:
    """The kh * kw input windows a strided, dilated conv reads, one [N, Ho, Wo, C] slice of the
    zero-padded input per kernel tap (row-major over the taps)."""
    n, h, w, c = x.shape
    ho, wo = (_output_size(h, kh, stride, padding, dilation),
              _output_size(w, kw, stride, padding, dilation))
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    windows = []
    for i in range(kh):
        for j in range(kw):
            start = (0, i * dilation, j * dilation, 0)
            limit = (n, start[1] + stride * (ho - 1) + 1, start[2] + stride * (wo - 1) + 1, c)
            windows.append(jax.lax.slice(xp, start, limit, (1, stride, stride, 1)))
    return windows


def _conv_as_tap_dots(x: Array, kernel: Array, stride: int, padding: int, dilation: int) -> Array:
    """A bf16 conv as one bf16 x bf16 -> f32 matrix product per kernel tap, summed in f32 and
    rounded once to bf16 at the end, as XLA's conv rounds: XLA:CPU sends these dots to kernels
    that use the CPU's bf16 units (AVX512-BF16 / AMX), where its conv would compute in f32."""
    kh, kw, _, _ = kernel.shape
    y = 0
    for tap, window in enumerate(_tap_windows(x, kh, kw, stride, padding, dilation)):
        y = y + jnp.dot(window, kernel[tap // kw, tap % kw], preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_tapwise_grad(x: Array, kernel: Array, stride: int, padding: int, dilation: int) -> Array:
    return _conv_cpu_forward(x, kernel, stride, padding, dilation)


def _conv_tapwise_fwd(x, kernel, stride, padding, dilation):
    one_window = kernel.shape[0] * kernel.shape[1] == 1  # nothing for XLA to merge (see below)
    if (_prefers_im2col(x.shape, kernel.shape, stride, padding, dilation)
            and (x.dtype != jnp.bfloat16 or one_window)):
        return _conv_as_im2col(x, kernel, stride, padding, dilation), (x, kernel)
    return xla_conv(x, kernel, stride, padding, dilation), (x, kernel)


def _conv_cpu_forward(x: Array, kernel: Array, stride: int, padding: int, dilation: int) -> Array:
    """XLA's conv, except in bf16 (`_conv_as_tap_dots`) and on small outputs (`_conv_as_im2col`,
    see `_prefers_im2col`). The bf16 form only where nothing differentiates it (inference): in a
    train step XLA would merge the forward's tap windows with the kernel gradient's and keep all
    of them alive until the backward pass, so `_conv_tapwise_fwd` keeps XLA's conv there."""
    if x.dtype == jnp.bfloat16:
        return _conv_as_tap_dots(x, kernel, stride, padding, dilation)
    if _prefers_im2col(x.shape, kernel.shape, stride, padding, dilation):
        return _conv_as_im2col(x, kernel, stride, padding, dilation)
    return xla_conv(x, kernel, stride, padding, dilation)


def _output_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _prefers_im2col(x_shape: tuple[int, ...], kernel_shape: tuple[int, ...], stride: int,
                    padding: int, dilation: int) -> bool:
    """Whether `_conv_as_im2col` beats XLA:CPU's conv (`python benchmarks/conv_kernels.py`
    measures both per layer shape): every 1x1 conv (a plain matrix product: 1.3-2x faster, e.g.
    RainNet's attention gates), and a conv with at most 8 x 8 output pixels whose patches are at
    least 1024 wide (RainNet's 4x4 encoder convs from 16 x 16 down to 1 x 1, up to 17x faster at
    1 x 1, and its discriminator's last three). Narrower patches (tiny test widths) compile
    slower and run no faster as products; on larger outputs XLA's spatial conv wins or ties."""
    kh, kw, cin = kernel_shape[:3]
    pixels = (_output_size(x_shape[1], kh, stride, padding, dilation)
              * _output_size(x_shape[2], kw, stride, padding, dilation))
    return kh * kw == 1 or (pixels <= 8 * 8 and kh * kw * cin >= 1024)


def _conv_as_im2col(x: Array, kernel: Array, stride: int, padding: int, dilation: int) -> Array:
    """A conv as one matrix product: the tap windows side by side ([N, Ho, Wo, kh * kw * C], the
    im2col patches) times the kernel as [kh * kw * C, O]."""
    kh, kw, cin, cout = kernel.shape
    patches = jnp.concatenate(_tap_windows(x, kh, kw, stride, padding, dilation), axis=-1)
    y = jnp.dot(patches, kernel.reshape(kh * kw * cin, cout),
                preferred_element_type=jnp.promote_types(x.dtype, jnp.float32))
    return y.astype(x.dtype)


def _strided_input_grad(g: Array, kernel: Array, x_shape: tuple[int, ...], stride: int,
                        padding: int, dilation: int) -> Array:
    """The input gradient of a strided conv as one matmul of g with the kernel, then an
    overlap-add of each tap's columns at stride `stride` (interior padding) into the padded
    input, cropped. XLA's own form is an input-dilated conv, whose own gradient (RainNet's
    gradient penalty differentiates through it) is much slower on CPU than these matmuls and
    slices."""
    kh, kw, cin, _ = kernel.shape
    n, ho, wo, _ = g.shape
    hp, wp = x_shape[1] + 2 * padding, x_shape[2] + 2 * padding
    cols = jnp.einsum("nhwo,yxio->nhwyxi", g, kernel)
    dxp = 0
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dilation, j * dilation
            dxp = dxp + jax.lax.pad(cols[:, :, :, i, j], jnp.zeros((), cols.dtype), (
                (0, 0, 0), (y0, hp - y0 - stride * (ho - 1) - 1, stride - 1),
                (x0, wp - x0 - stride * (wo - 1) - 1, stride - 1), (0, 0, 0)))
    return dxp[:, padding:hp - padding, padding:wp - padding].astype(g.dtype)


def _conv_tapwise_bwd(stride, padding, dilation, residuals, g):
    x, kernel = residuals
    if stride > 1 or kernel.shape[0] * kernel.shape[1] == 1:
        dx = _strided_input_grad(g, kernel, x.shape, stride, padding, dilation)
    else:
        _, input_vjp = jax.vjp(lambda x: xla_conv(x, kernel, stride, padding, dilation), x)
        (dx,) = input_vjp(g)
    kh, kw, cin, cout = kernel.shape
    g2 = g.reshape(-1, cout)
    accumulate = jnp.promote_types(g2.dtype, jnp.float32)
    taps = [  # dW[i, j] = sum over output pixels of x[tap (i, j) of the pixel] * g
        jnp.dot(window.reshape(-1, cin).T, g2, preferred_element_type=accumulate)
        for window in _tap_windows(x, kh, kw, stride, padding, dilation)]
    return dx, jnp.stack(taps).reshape(kernel.shape).astype(kernel.dtype)


_conv_tapwise_grad.defvjp(_conv_tapwise_fwd, _conv_tapwise_bwd)

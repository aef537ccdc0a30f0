"""ResNet BasicBlock and ResNet34 layers, laid out like torchvision's so weights map one to one.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Fig. 2 (left) and Table 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jirl.models.layers import BatchNorm, Conv2d, Dtype

RESNET34_FEATURES = (64, 128, 256, 512)
RESNET34_BLOCKS = (3, 4, 6, 3)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or projected shortcut (He et al. 2016, Fig. 2).

    `shortcut="conv_bn"` is torchvision's projection (1x1 conv without bias + BN, used when the
    stride or width changes); `shortcut="conv_bias"` is DIRL's `blocks.BasicBlock` projection
    (1x1 conv with bias, no BN, used only when the width changes).
    """

    features: int
    stride: int = 1
    shortcut: str = "conv_bn"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        residual = x
        y = Conv2d(self.features, 3, self.stride, 1, use_bias=False, dtype=self.dtype,
                   name="conv1")(x)
        y = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(y, train))
        y = Conv2d(self.features, 3, 1, 1, use_bias=False, dtype=self.dtype, name="conv2")(y)
        y = BatchNorm(dtype=self.dtype, name="bn2")(y, train)
        projects = self.stride != 1 or x.shape[-1] != self.features
        if projects and self.shortcut == "conv_bn":
            residual = Conv2d(self.features, 1, self.stride, 0, use_bias=False, dtype=self.dtype,
                              name="downsample_conv")(x)
            residual = BatchNorm(dtype=self.dtype, name="downsample_bn")(residual, train)
        elif projects and self.shortcut == "conv_bias":
            if self.stride != 1:
                raise ValueError("the 'conv_bias' shortcut of DIRL's BasicBlock has no stride")
            residual = Conv2d(self.features, 1, 1, 0, use_bias=True, dtype=self.dtype,
                              name="downsample_conv")(x)
        elif projects:
            raise ValueError(f"unknown shortcut {self.shortcut!r}; use 'conv_bn' or 'conv_bias'")
        return nn.relu(y + residual.astype(y.dtype))


class ResLayer(nn.Module):
    """A ResNet stage: `blocks` BasicBlocks, the first one with `stride` (torchvision `_make_layer`)."""

    features: int
    blocks: int
    stride: int = 1
    shortcut: str = "conv_bn"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(self.blocks):
            x = BasicBlock(self.features, self.stride if i == 0 else 1, self.shortcut,
                           dtype=self.dtype, name=f"block{i}")(x, train)
        return x


def check_stage_config(features: Sequence[int], blocks: Sequence[int], n: int) -> None:
    """Raises a clear error when a stage configuration has the wrong length or non-positive entries."""
    if len(features) != n or len(blocks) != n:
        raise ValueError(
            f"expected {n} stage widths and {n} block counts, got {tuple(features)} and "
            f"{tuple(blocks)}"
        )
    if min(features) < 1 or min(blocks) < 1:
        raise ValueError(f"stage widths and block counts must be >= 1: {features}, {blocks}")

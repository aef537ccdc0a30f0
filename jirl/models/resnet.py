"""ResNet BasicBlock and ResNet34 layers, laid out like torchvision's so weights map one to one.

He et al., "Deep Residual Learning for Image Recognition", CVPR 2016, Fig. 2 (left) and Table 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jirl.models import Pretrained
from jirl.models.layers import BatchNorm, Conv2d, Dtype, max_pool

RESNET34_FEATURES = (64, 128, 256, 512)
RESNET34_BLOCKS = (3, 4, 6, 3)

_BLOCK = r"(conv1|bn1|conv2|bn2)"
# torchvision resnet34 (`config.model.backbone_weights`): layers 1-4 become stages 1-4 of
# `Encoder` (the official `pretrained=True`); its 7x7 stem and classifier have no counterpart.
TORCHVISION_RESNET34 = Pretrained(
    key="backbone_weights", kind="resnet34",
    rules=((rf"layer(\d)\.(\d+)\.{_BLOCK}", r"encoder/encoder\1/block\2/\3"),
           (r"layer(\d)\.(\d+)\.downsample\.0", r"encoder/encoder\1/block\2/downsample_conv"),
           (r"layer(\d)\.(\d+)\.downsample\.1", r"encoder/encoder\1/block\2/downsample_bn")),
    unused=(r"(conv1|bn1)\.\w+", r"fc\.\w+"),
    required=tuple(f"{c}/encoder/encoder{i}/" for c in ("params", "batch_stats") for i in range(1, 5)))
RESNET34_BACKBONE = (TORCHVISION_RESNET34,)


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


class Encoder(nn.Module):
    """Five-stage encoder of DIRL (§3.1), the UNet baseline and RSRNet (§3.1 of each paper).

    3x3 stem (conv-BN-ReLU) without max-pool, ResNet34 layers 1-4, max-pool, stage 5. Layer 1 runs
    at full resolution, so the five features are at 1, 1/2, 1/4, 1/8, 1/16 of the input. The
    official DIRL stem conv has a bias, the official UNet's has none (`stem_bias`).
    """

    stem_features: int = 64
    stage_features: Sequence[int] = (64, 128, 256, 512, 512)
    stage_blocks: Sequence[int] = (3, 4, 6, 3, 3)
    stem_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> list[jax.Array]:
        check_stage_config(self.stage_features, self.stage_blocks, 5)
        h = Conv2d(self.stem_features, 3, 1, 1, use_bias=self.stem_bias, dtype=self.dtype, name="inconv")(x)
        h = nn.relu(BatchNorm(dtype=self.dtype, name="inbn")(h, train))
        skips = []
        for i in range(4):
            h = ResLayer(self.stage_features[i], self.stage_blocks[i], 1 if i == 0 else 2,
                         "conv_bn", self.dtype, name=f"encoder{i + 1}")(h, train)
            skips.append(h)
        h = max_pool(h)
        h = ResLayer(self.stage_features[4], self.stage_blocks[4], 1, "conv_bias", self.dtype,
                     name="encoder5")(h, train)
        skips.append(h)
        return skips


def check_image(image: jax.Array, model: str, multiple: int = 16) -> tuple[int, int, int]:
    """(B, H, W) of an [B, H, W, 3] image batch; a clear error unless H and W are multiples of
    `multiple` (the encoder's total stride)."""
    if image.ndim != 4 or image.shape[-1] != 3 or image.shape[1] % multiple or image.shape[2] % multiple:
        raise ValueError(f"{model} takes [B, H, W, 3] images with H and W multiples of {multiple}; "
                         f"got {image.shape}")
    return image.shape[:3]

"""UNet baseline with a ResNet34 encoder, as in the MadisNet code (Liang et al., AAAI 2022).

Official code: bcmi/MadisNet-Inharmonious-Region-Localization, `networks/UNet.py`, built by
`train.py` as `UNet(in_ch=3, n_downs=5)` (nf=64, backbone='resnet34'; the class default
`n_downs=4` is not what MadisNet trains). Its parts, and their names here:
  * encoder (`in_conv` + `downs.d0..d4`): 3x3 stem conv *without bias* + BN + ReLU, ResNet34
    layers 1-4 (layer 1 at full resolution: there is no 7x7 stem or max-pool), then max-pool and
    three `blocks.BasicBlock`s of 512 (a 1x1 conv-with-bias shortcut where the width changes):
    exactly `jirl.models.resnet.Encoder(stem_bias=False)`;
  * `bottleneck`: a DoubleConv at 1/16;
  * `ups.u4 .. u0`: `Up` blocks; the deepest (u4) does not upsample (its input is already at
    the skip's 1/16), the others upsample bilinearly x2 (align_corners=True);
  * `out_conv`: 1x1 conv to one logit channel, then sigmoid.
Only n_downs=5 (the MadisNet setting) is implemented: its five stages are jirl's shared Encoder.

Difference from the official forward pass: the official code ends with
`F.interpolate(logits, x.shape[2:][::-1], mode='bilinear', align_corners=True)`, which resizes
to (W, H), swapping height and width (an identity for the square inputs it is trained and tested
on). jirl resizes to (H, W), which is an identity for every valid input (the decoder output is
already at the input size), so square inputs give the official outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jirl import losses
from jirl.models import ModelSpec, from_config
from jirl.models.layers import Conv2d, ConvBlock, Dtype, resize_bilinear, stat_dtype, upsample_bilinear2x
from jirl.models.resnet import RESNET34_BACKBONE, Encoder, check_image

Array = jax.Array


class DoubleConv(nn.Module):
    """Official `DoubleConv`: (conv3x3 with bias -> BN -> ReLU) x 2, both to `features` channels."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> Array:
        for i in (1, 2):
            x = ConvBlock(self.features, 3, 1, 1, use_bias=True, dtype=self.dtype, name=f"block{i}")(x, train)
        return x


class Up(nn.Module):
    """Official `Up`: [bilinear x2, align_corners] -> conv3x3 to the skip's width, concat [x, skip],
    DoubleConv(features)."""

    features: int
    upsample: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, skip: Array, train: bool) -> Array:
        if self.upsample:
            x = upsample_bilinear2x(x)
        x = Conv2d(skip.shape[-1], 3, 1, 1, use_bias=True, dtype=self.dtype, name="up_conv")(x)
        x = jnp.concatenate([x, skip.astype(x.dtype)], axis=-1)
        return DoubleConv(self.features, self.dtype, name="conv")(x, train)


class UNetDecoder(nn.Module):
    """Official UNet decoder: bottleneck DoubleConv on the deepest skip, Ups u{n-1}..u0, 1x1 out_conv.

    `features[i]` is the width that `u{i}` outputs (official `dims[i]`); skip i is `u{i}`'s skip.
    The deepest Up keeps the resolution (official `upsample=False`), the others double it.
    Returns logits at the shallowest skip's resolution, `num_classes` channels.
    """

    features: Sequence[int]
    num_classes: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, skips: Sequence[Array], train: bool) -> Array:
        n = len(skips)
        if n != len(self.features):
            raise ValueError(f"UNetDecoder got {n} skips but {len(self.features)} widths")
        h = DoubleConv(skips[-1].shape[-1], self.dtype, name="bottleneck")(skips[-1], train)
        for i in range(n - 1, -1, -1):
            h = Up(self.features[i], upsample=i != n - 1, dtype=self.dtype, name=f"u{i}")(h, skips[i], train)
        return Conv2d(self.num_classes, 1, 1, 0, use_bias=True, dtype=self.dtype, name="out_conv")(h)


class UNet(nn.Module):
    """ResNet34-encoder UNet (MadisNet's `UNet(n_downs=5)`): image [B,H,W,3] -> mask [B,H,W,1].

    Returns {"mask": sigmoid probabilities, "logits": pre-sigmoid}, both [B,H,W,1].
    H and W must be multiples of 16. The Up `u{i}` outputs `(stem_features, *stage_features)[i]`
    channels, as the official `dims`.
    """

    stem_features: int = 64
    stage_features: Sequence[int] = (64, 128, 256, 512, 512)
    stage_blocks: Sequence[int] = (3, 4, 6, 3, 3)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, train: bool = False) -> dict:
        b, h, w = check_image(image, "UNet")
        skips = Encoder(self.stem_features, self.stage_features, self.stage_blocks, stem_bias=False,
                        dtype=self.dtype, name="encoder")(image, train)
        widths = (self.stem_features, *self.stage_features[:4])
        logits = UNetDecoder(widths, dtype=self.dtype, name="decoder")(skips, train)
        if logits.shape[1:3] != (h, w):  # official final F.interpolate (to (H, W) here, see above)
            logits = resize_bilinear(logits, (h, w), align_corners=True)
        logits = logits.astype(stat_dtype(self.dtype))
        chex.assert_shape(logits, (b, h, w, 1))
        return {"mask": jax.nn.sigmoid(logits), "logits": logits}


def build(cfg: ml_collections.ConfigDict, dtype: Dtype = jnp.float32) -> UNet:
    """UNet from `config.model` (keys: stem_features, stage_features, stage_blocks)."""
    return from_config(UNet, cfg, dtype)


def objective(outputs: dict, batch: dict, loss_cfg: ml_collections.ConfigDict):
    """MadisNet's localizer loss (`train.py`, `multi_bce_loss_fusion` with loss_weights
    [1, lambda_ssim, lambda_iou]): bce + lambda_ssim (1 - ssim) + lambda_iou iou, x lambda_detection.

    The official defaults (options.py and scripts/train.sh) are lambda_ssim = 0, lambda_iou = 1:
    bce + iou. Logs the unweighted terms, "ssim" included (= 1 - SSIM, as the official logs it).
    """
    _, parts = losses.mask_loss(outputs["mask"], batch["mask"], "bce_ssim_iou")
    weights = {"bce": 1.0, "ssim": loss_cfg.lambda_ssim, "iou": loss_cfg.lambda_iou}
    detection = jnp.zeros((), jnp.float32)
    for name, value in parts.items():
        if weights[name]:  # a zero-weight term is logged only (no 0 * NaN in the gradient)
            detection = detection + weights[name] * value
    total = loss_cfg.lambda_detection * detection
    return total, {"total": total, "detection": detection, **parts}


def eval_masks(outputs: dict) -> dict[str, Array]:
    """The masks that eval.py scores: the UNet has one."""
    return {"mask": outputs["mask"]}


# `pretrained`: encoder stages 1-4 take torchvision ResNet34 weights (`model.backbone_weights`), the
# official `models.resnet34(True)`.
SPEC = ModelSpec(name="unet", build=build, objective=objective, eval_masks=eval_masks,
                 pretrained=RESNET34_BACKBONE)

"""DIRL: Deep Inharmonious Region Localization (Liang, Niu, Zhang, ICME 2021).

Encoder (§3.1) -> Bi-directional Feature Integration (BFI, §3.2) -> Mask-guided Dual Attention
(MDA, §3.3) -> Global-context Guided Decoder (GGD, §3.4). Where paper and the official code
(bcmi/DIRL-Inharmonious-Region-Localization) differ, this follows the official forward pass so
that its checkpoints reproduce their outputs:
  * the MDA channel gate is ECA (a 1-D conv over pooled channels), and MDA returns x*att + x_ca;
  * BFI upsamples with nearest x2, GGD with bilinear align_corners=True;
  * the attention maps are resized to the input with bilinear align_corners=False (MadisNet's
    copy of DIRL uses align_corners=True: `attention_align_corners`);
  * GGD's outermost block owns a `conv4` that its forward pass never calls; it is kept (created
    at init only) so that the parameter count and the checkpoint layout match.
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
from jirl.models.layers import (
    Conv2d,
    ConvBlock,
    Dtype,
    resize_bilinear,
    stat_dtype,
    upsample_bilinear2x,
)
from jirl.models.resnet import RESNET34_BACKBONE, Encoder, check_image

Array = jax.Array


class BFI(nn.Module):
    """Bi-directional Feature Integration (§3.2, Fig. 2): top-down and bottom-up paths, fused.

    `mode` is "h2l" (first level: two inputs, output at the low level's size), "hl2m" (three
    inputs, output at the middle level's size) or "l2h" (last level: output at the high level's
    size). Every conv is ReLU -> conv(bias) -> BN (`Conv2dBlock(activation_first=True)`).
    """

    features: int
    mode: str

    dtype: Dtype = jnp.float32

    def _block(self, features: int, stride: int, name: str, upsample: bool = False) -> ConvBlock:
        """ReLU -> conv3x3 -> BN; `upsample`: applied to upsample_nearest2x of its input."""
        return ConvBlock(features, 3, stride, 1, activation_first=True, dtype=self.dtype,
                         upsample_input=upsample, name=name)

    @nn.compact
    def __call__(self, xs: Sequence[Array], train: bool) -> Array:
        if self.mode in ("h2l", "l2h"):
            return self._two_level(*xs, train=train)
        if self.mode == "hl2m":
            return self._three_level(*xs, train=train)
        raise ValueError(f"unknown BFI mode {self.mode!r}; use 'h2l', 'hl2m' or 'l2h'")

    def _two_level(self, xl: Array, xh: Array, *, train: bool) -> Array:
        low = xl + self._block(xl.shape[-1], 1, "top_down", upsample=True)(xh, train)
        high = xh + self._block(xh.shape[-1], 2, "bottom_up")(xl, train)
        xl_cat = jnp.concatenate([low, xl], axis=-1)
        xh_cat = jnp.concatenate([xh, high], axis=-1)
        if self.mode == "h2l":
            xh_cat = self._block(self.features, 1, "h_concat", upsample=True)(xh_cat, train)
            xl_cat = self._block(self.features, 1, "l_concat")(xl_cat, train)
        else:
            xh_cat = self._block(self.features, 1, "h_concat")(xh_cat, train)
            xl_cat = self._block(self.features, 2, "l_concat")(xl_cat, train)
        return xh_cat + xl_cat

    def _three_level(self, xl: Array, xm: Array, xh: Array, *, train: bool) -> Array:
        xh2m = self._block(xm.shape[-1], 1, "top_down_h2m", upsample=True)(xh, train) + xm
        xm2l = self._block(xl.shape[-1], 1, "top_down_m2l", upsample=True)(xh2m, train) + xl
        xl2m = self._block(xm.shape[-1], 2, "bottom_up_l2m")(xl, train) + xm
        xm2h = self._block(xh.shape[-1], 2, "bottom_up_m2h")(xl2m, train) + xh
        xl_cat = self._block(self.features, 2, "l_concat")(
            jnp.concatenate([xm2l, xl], axis=-1), train)
        xm_cat = self._block(self.features, 1, "m_concat")(
            jnp.concatenate([xh2m, xl2m], axis=-1), train)
        xh_cat = self._block(self.features, 1, "h_concat", upsample=True)(
            jnp.concatenate([xh, xm2h], axis=-1), train)
        return xl_cat + xm_cat + xh_cat


class Transition(nn.Module):
    """BFI at every level (§3.2): level i fuses encoder features i-1, i, i+1 into `features` channels."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, xs: Sequence[Array], train: bool) -> list[Array]:
        n = len(xs)
        out = [BFI(self.features, "h2l", self.dtype, name="im0")(xs[:2], train)]
        for i in range(1, n - 1):
            out.append(BFI(self.features, "hl2m", self.dtype, name=f"im{i}")(xs[i - 1:i + 2], train))
        out.append(BFI(self.features, "l2h", self.dtype, name=f"im{n - 1}")(xs[-2:], train))
        return out


class ECA(nn.Module):
    """Channel gate of MDA (§3.3, official code): ECA, sigmoid(conv1d_k3(avgpool(x))) * x."""

    kernel_size: int = 3

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = self.kernel_size
        bound = 1.0 / (k ** 0.5)
        kernel = self.param(
            "kernel", lambda key, s: jax.random.uniform(key, s, jnp.float32, -bound, bound), (k,))
        y = jnp.mean(x.astype(stat_dtype(x.dtype)), axis=(1, 2))  # [B, C]
        pad = (k - 1) // 2
        yp = jnp.pad(y, ((0, 0), (pad, pad)))
        c = y.shape[-1]
        gate = sum(kernel[j] * yp[:, j:j + c] for j in range(k))
        return x * jax.nn.sigmoid(gate)[:, None, None, :].astype(x.dtype)


class SpatialGate(nn.Module):
    """Spatial gate of MDA (§3.3): conv3x3-BN-ReLU, conv7x7-BN, sigmoid -> attention map."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
        h = ConvBlock(x.shape[-1], 3, 1, 1, use_bias=False, bn_momentum=0.01, dtype=self.dtype,
                      name="conv0")(x, train)
        h = ConvBlock(1, 7, 1, 3, use_bias=False, activation="none", bn_momentum=0.01,
                      dtype=self.dtype, name="conv1")(h, train)
        attention = jax.nn.sigmoid(h.astype(stat_dtype(self.dtype)))
        return x * attention.astype(x.dtype), attention


class MDA(nn.Module):
    """Mask-guided Dual Attention (§3.3): ECA channel gate then spatial gate; returns x*att + x_ca."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
        x_ca = ECA(name="channel_gate")(x)
        x_sa, attention = SpatialGate(self.dtype, name="spatial_gate")(x_ca, train)
        return x_sa + x_ca, attention


class GGDBlock(nn.Module):
    """One Global-context Guided Decoder step (§3.4): gate by the coarse path, fuse, refine."""

    features: int
    outmost: bool = False
    dtype: Dtype = jnp.float32

    def _conv(self, name: str) -> ConvBlock:
        return ConvBlock(self.features, 3, 1, 1, use_bias=False, activation="none",
                         dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, x: Array, up: Array, bottom: Array, train: bool) -> tuple[Array, Array]:
        x_up = self._conv("conv_inup")(upsample_bilinear2x(up), train) * x
        x_bottom = self._conv("conv_inbottom")(upsample_bilinear2x(bottom), train)
        x_out = self._conv("conv_cat")(jnp.concatenate([x_up, x_bottom], axis=-1), train)
        if not self.outmost:
            return x_out, x_bottom
        x_out = upsample_bilinear2x(x_out)
        if self.is_initializing():  # official `conv4`: owned, never called (see module docstring)
            self._conv("conv4")(x_out, train)
        logits = Conv2d(1, 1, 1, 0, use_bias=True, dtype=self.dtype, name="conv5")(x_out)
        return logits, x_out


class GGD(nn.Module):
    """Global-context Guided Decoder (§3.4): starts from the deepest (global-context) feature."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, xs: Sequence[Array], train: bool) -> Array:
        up = bottom = xs[-1]
        middle = xs[1:-1]
        for idx in range(len(middle) - 1, -1, -1):
            block = GGDBlock(self.features, outmost=idx == 0, dtype=self.dtype, name=f"d{idx}")
            up, bottom = block(middle[idx], up, bottom, train)
        return up


class Decoder(nn.Module):
    """Official `InharmoniousDecoder`: Transition (BFI) -> MDA at every level -> GGD."""

    ggd_ch: int = 32
    dtype: Dtype = jnp.float32
    attention_align_corners: bool = False

    @nn.compact
    def __call__(self, skips: Sequence[Array], train: bool) -> tuple[Array, tuple[Array, ...]]:
        x = Transition(self.ggd_ch, self.dtype, name="trans")(skips, train)
        out_hw = x[0].shape[1:3]
        attention = []
        for i in range(len(x) - 1, -1, -1):
            x[i], att = MDA(self.dtype, name=f"mda_{i}")(x[i], train)
            attention.append(resize_bilinear(att, out_hw, align_corners=self.attention_align_corners))
        logits = GGD(self.ggd_ch, self.dtype, name="ggd")(x, train)
        return logits.astype(stat_dtype(self.dtype)), tuple(attention)


class DIRL(nn.Module):
    """DIRL (Liang et al. 2021, Fig. 2): image [B,H,W,3] -> inharmonious-region mask [B,H,W,1].

    Returns {"mask": sigmoid probabilities, "logits": pre-sigmoid, "attention": the five MDA
    attention maps (deepest level first, as the official code), each [B,H,W,1] at input size}.
    H and W must be multiples of 16.
    """

    stem_features: int = 64
    stage_features: Sequence[int] = (64, 128, 256, 512, 512)
    stage_blocks: Sequence[int] = (3, 4, 6, 3, 3)
    ggd_ch: int = 32
    # MadisNet's copy of DIRL resizes the attention maps with align_corners=True (DIRL's: False)
    attention_align_corners: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, train: bool = False) -> dict:
        b, h, w = check_image(image, "DIRL")
        skips = Encoder(self.stem_features, self.stage_features, self.stage_blocks,
                        dtype=self.dtype, name="encoder")(image, train)
        logits, attention = Decoder(self.ggd_ch, self.dtype, self.attention_align_corners,
                                    name="decoder")(skips, train)
        chex.assert_shape(logits, (b, h, w, 1))
        chex.assert_shape(attention, (b, h, w, 1))
        return {"mask": jax.nn.sigmoid(logits), "logits": logits, "attention": attention}


def build(cfg: ml_collections.ConfigDict, dtype: Dtype = jnp.float32) -> DIRL:
    """DIRL from `config.model` (keys: stem_features, stage_features, stage_blocks, ggd_ch)."""
    return from_config(DIRL, cfg, dtype)


def objective(outputs: dict, batch: dict, loss_cfg: ml_collections.ConfigDict):
    """The DIRL training objective selected by `config.loss` (see `losses.dirl_objective`); the
    per-mask terms are `loss.mode` (default bce_ssim_iou, DIRL's; MadisNet's train.py: bce_iou)."""
    return losses.dirl_objective(
        outputs["mask"], outputs["attention"], batch["mask"],
        variant=loss_cfg.variant,
        lambda_attention=loss_cfg.lambda_attention,
        lambda_detection=loss_cfg.lambda_detection,
        mode=loss_cfg.get("mode", "bce_ssim_iou"),
    )


def eval_masks(outputs: dict) -> dict[str, Array]:
    """The masks that eval.py scores: DIRL has one."""
    return {"mask": outputs["mask"]}


# `pretrained`: encoder stages 1-4 take torchvision ResNet34 weights (`model.backbone_weights`), as the
# official `resnet34(pretrained=True)`; the 3x3 stem and stage 5 keep their random init.
SPEC = ModelSpec(name="dirl", build=build, objective=objective, eval_masks=eval_masks,
                 pretrained=RESNET34_BACKBONE)

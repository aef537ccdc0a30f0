"""MadisNet: inharmonious region localization by magnifying domain discrepancy (Liang, Niu, Cong,
Zhang, AAAI 2022).

Official code: bcmi/MadisNet-Inharmonious-Region-Localization (`train.py`, `networks/E_dom.py`,
`networks/iHDRNet.py`); libcom ships its MadisNet(DIRL) for inference. The framework (Fig. 2):
  * iHDRNet (§3.2, `jirl.models.ihdrnet`) maps the composite I to I' in (0, 1) with a bilateral
    grid of colour transforms, so that the inharmonious region stands out;
  * G, the localizer (§3.1): any registered jirl localizer (DIRL and the UNet baseline as in the
    paper; RSRNet too), fed I' exactly as the official code feeds it (in [0, 1], not normalized);
  * E_dom, the domain encoder (§3.3, Fig. 4, training only): frozen VGG16 conv1_1 ... conv3_3 as
    partial convolutions over the region, trainable 1x1 partial-conv adaptors to `style_dim` at
    three scales, global average pooling, and learned sigmoid weights over the scales. Its codes
    of foreground and background, on I and on I', give the domain-discrepancy magnification loss
    L_ddm and the direction-invariance loss L_di (`jirl.losses.domain_discrepancy_losses`).
The total loss (official train.py) is the localizer's own loss (for DIRL: bce + iou on the mask and
on the five MDA attention maps) + lambda_ddm L_ddm + lambda_di L_di. G, iHDRNet and E_dom's
trainable parts are three optimizer groups (three torch Adams); the VGG layers are the group
"frozen": no gradient, no update, no optimizer state.

Official quirks kept: the partial-conv adaptors' pooling averages over the whole map (so codes
scale with the region's area); E_dom sees the normalized composite but the un-normalized I'.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jirl import losses
from jirl.models import FROZEN_GROUP, ModelSpec, Pretrained, get_spec
from jirl.models import ihdrnet as ihdr
from jirl.models.layers import Dtype, PartialConv2d, max_pool, stat_dtype

Array = jax.Array

VGG16_FEATURES = (64, 64, 128, 128, 256, 256, 256)  # conv1_1 ... conv3_3
_STAGES = ((0, 1), (2, 3), (4, 5, 6))  # the convs before each of the three max-pools
# torchvision vgg16 (`config.model.vgg_weights`): `features.{0,2,5,7,10,12,14}` (conv1_1 ...
# conv3_3) become E_dom's partial convs conv0 ... conv6, as the official
# `PartialConv2d(vgg16.features[i])`; the deeper convs and the classifier are not used.
_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14)
TORCHVISION_VGG16 = Pretrained(
    key="vgg_weights", kind="vgg16", prefix="domain_encoder",
    rules=tuple((rf"features\.{i}", f"conv{k}") for k, i in enumerate(_VGG16_CONVS)),
    unused=(r"features\.(1[6-9]|2\d)\.\w+", r"classifier\.\d+\.\w+"),
    required=tuple(f"params/conv{k}/" for k in range(len(_VGG16_CONVS))))
MODEL_KEYS = ("name", "localizer", "ihdrnet", "style_dim", "vgg_features", "domain_encoder",
              "backbone_weights", "vgg_weights")


class DomainEncoder(nn.Module):
    """E_dom (§3.3, Fig. 4; official `DomainEncoder`): (image, region mask) -> domain code [B, style_dim].

    Three VGG16 stages of partial convs (frozen) + ReLU, each ending in a 2x2 max-pool of features
    and mask; after each pool, a 1x1 partial-conv adaptor (no bias) and a global average; the
    three codes are mixed with weights sigmoid(p) / sum(sigmoid(p)), p initialized to ones.
    """

    features: Sequence[int] = VGG16_FEATURES
    style_dim: int = 16
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, mask: Array) -> Array:
        x, m = image.astype(self.dtype), mask
        codes = []
        for stage, convs in enumerate(_STAGES):
            for i in convs:
                x, m = PartialConv2d(self.features[i], 3, 1, frozen=True, dtype=self.dtype,
                                     name=f"conv{i}")(x, m)
                x = nn.relu(x)
            x, m = max_pool(x, 2, 2, 0), max_pool(m, 2, 2, 0)
            z, _ = PartialConv2d(self.style_dim, 1, 0, use_bias=False, dtype=self.dtype,
                                 name=f"adaptor{stage + 1}")(x, m)
            codes.append(jnp.mean(z.astype(stat_dtype(self.dtype)), axis=(1, 2)))
        w = jax.nn.sigmoid(self.param("weight", nn.initializers.ones, (len(_STAGES),)))
        w = w / (jnp.sum(w) + 1e-8)
        return sum(w[k] * codes[k] for k in range(len(_STAGES)))


class MadisNet(nn.Module):
    """MadisNet (Fig. 2): ImageNet-normalized composite [B,H,W,3] -> the localizer G's outputs on
    I' (its "mask", and e.g. DIRL's "attention"), plus "retouched" (I') and "guide".

    With the ground-truth `mask` [B,H,W,1] (training), also "domain_codes": (z_f, z_b, z'_f, z'_b),
    E_dom's codes of foreground and background on I and on I'. `g` is the localizer module.
    """

    g: nn.Module
    ihdrnet: ihdr.IHDRNet
    domain_encoder: DomainEncoder | None = None

    def __call__(self, image: Array, train: bool = False, mask: Array | None = None) -> dict:
        mapped = self.ihdrnet(image, train)
        retouched = mapped["retouched"]
        outputs = dict(self.g(retouched, train))
        outputs.update(retouched=retouched, guide=mapped["guide"])
        if self.domain_encoder is not None and (mask is not None or self.is_initializing()):
            if mask is None:  # initialization creates E_dom's parameters too
                mask = jnp.ones(image.shape[:3] + (1,), jnp.float32)
            masks = jnp.concatenate([mask, 1 - mask]).astype(jnp.float32)
            # two calls, not one batch of four: no gradient flows back to the composite, so the
            # backward pass through the frozen VGG runs on I' only (a third less E_dom work)
            z_f, z_b = jnp.split(self.domain_encoder(jnp.concatenate([image, image]), masks), 2)
            z_mf, z_mb = jnp.split(self.domain_encoder(jnp.concatenate([retouched, retouched]), masks), 2)
            outputs["domain_codes"] = (z_f, z_b, z_mf, z_mb)
        return outputs


def _check_keys(cfg: ml_collections.ConfigDict) -> None:
    unknown = sorted(set(cfg.keys()) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(f"config.model has keys that MadisNet does not take: {unknown}; its keys "
                         f"are {sorted(MODEL_KEYS)} (the localizer's go under model.localizer)")
    if cfg.localizer.name == "madisnet":
        raise ValueError("config.model.localizer.name: MadisNet cannot localize with MadisNet")


def build(cfg: ml_collections.ConfigDict, dtype: Dtype = jnp.float32) -> MadisNet:
    """MadisNet from `config.model`: `localizer` (a registered localizer's model config, with its
    `name`), `ihdrnet` (IHDRNet fields), `style_dim`, `vgg_features`, `domain_encoder` (False:
    no E_dom, e.g. to ablate L_ddm and L_di)."""
    _check_keys(cfg)
    g = get_spec(cfg.localizer.name).build(cfg.localizer, dtype=dtype)
    encoder = (DomainEncoder(tuple(cfg.vgg_features), cfg.style_dim, dtype)
               if cfg.domain_encoder else None)
    return MadisNet(g=g, ihdrnet=ihdr.build(cfg.ihdrnet, dtype), domain_encoder=encoder)


def objective(outputs: dict, batch: dict, loss_cfg: ml_collections.ConfigDict,
              localizer_objective: Callable | None = None):
    """The localizer's own objective on its outputs + lambda_ddm L_ddm + lambda_di L_di.

    Logs every term apart: the localizer's (prefixed as it logs them), "localization" (its
    total), "ddm" and "di" (unweighted), "total".
    """
    if localizer_objective is None:
        raise ValueError("madisnet.objective needs the localizer's objective: use the ModelSpec "
                         "of resolve_spec(config.model)")
    total, logs = localizer_objective(outputs, batch, loss_cfg)
    logs = dict(logs, localization=total)
    if "domain_codes" in outputs:
        ddm, di = losses.domain_discrepancy_losses(*outputs["domain_codes"], margin=loss_cfg.ddm_margin)
        total = total + loss_cfg.lambda_ddm * ddm + loss_cfg.lambda_di * di
        logs.update(ddm=ddm, di=di)
    logs["total"] = total
    return total, logs


def eval_masks(outputs: dict) -> dict[str, Array]:
    """The masks that eval.py scores (the localizer's, once specialized by `for_config`)."""
    return {"mask": outputs["mask"]}


def eval_images(outputs: dict) -> dict[str, Array]:
    """The mapped image I', which `jirl eval --save_outputs` writes as retouched/<example>.png."""
    return {"retouched": outputs["retouched"]}


def train_inputs(batch: dict) -> dict:
    """E_dom reads the ground-truth region during training."""
    return {"mask": batch["mask"]}


PARAM_GROUPS = ("g", "ihdrnet", "domain_encoder", FROZEN_GROUP)


def param_labels(params: dict) -> dict:
    """Optimizer group of every parameter: its network (g, ihdrnet, domain_encoder), except E_dom's
    VGG layers, which are frozen."""

    def label(path, _) -> str:
        top = path[0].key
        if top == "domain_encoder" and path[1].key.startswith("conv"):
            return FROZEN_GROUP
        return top

    return jax.tree_util.tree_map_with_path(label, params)


def for_config(model_cfg: ml_collections.ConfigDict) -> ModelSpec:
    """MadisNet's spec around the localizer `model_cfg.localizer.name`: its objective, masks and
    iterations, its ImageNet backbone under "g", and VGG16 for E_dom."""
    _check_keys(model_cfg)
    loc = get_spec(model_cfg.localizer.name)
    pretrained = tuple(p.under("g") for p in loc.pretrained)
    if model_cfg.domain_encoder:
        pretrained += (TORCHVISION_VGG16,)
    return dataclasses.replace(
        SPEC, objective=functools.partial(objective, localizer_objective=loc.objective),
        eval_masks=loc.eval_masks, primary_mask=loc.primary_mask, step_masks=loc.step_masks,
        pretrained=pretrained, for_config=None)


SPEC = ModelSpec(name="madisnet", build=build, objective=objective, eval_masks=eval_masks,
                 train_inputs=train_inputs, param_groups=PARAM_GROUPS, param_labels=param_labels,
                 eval_images=eval_images, for_config=for_config)

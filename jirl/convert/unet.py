"""Official MadisNet UNet checkpoints -> jirl UNet variables.

Official keys (bcmi/MadisNet-Inharmonious-Region-Localization, `networks/UNet.py`,
`UNet(n_downs=5)` state_dict, e.g. the `g` network of a MadisNet(UNet) checkpoint) map one to
one onto jirl's module tree:

  in_conv.0 / in_conv.1                   -> encoder/inconv, encoder/inbn
  downs.d{i}.{j}.* (ResNet34 layer i+1)   -> encoder/encoder{i+1}/block{j}/*
  downs.d4.{j}.* (after the max-pool, 0)  -> encoder/encoder5/block{j-1}/*
  bottleneck.double_conv.{0,1,3,4}        -> decoder/bottleneck/block{1,2}/{conv,bn}
  ups.u{i}.up.1 (ups.u4.up: no upsample)  -> decoder/u{i}/up_conv
  ups.u{i}.conv.double_conv.{0,1,3,4}     -> decoder/u{i}/conv/block{1,2}/{conv,bn}
  out_conv.0                              -> decoder/out_conv

A MadisNet(UNet) `g` network was trained on iHDRNet-mapped images: on its own it is the
localizer of that pipeline, not a stand-alone baseline (the layout is the same).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jirl.runtime.mapping import assign
from jirl.runtime.torch_io import ConversionError, load_state_dict

_BLOCK = r"(conv1|bn1|conv2|bn2)"
_MAX_STAGE5_BLOCKS = 16  # official: 3; the rules cover narrower/deeper jirl configurations too
_DOUBLE_CONV = ((0, "block1/conv"), (1, "block1/bn"), (3, "block2/conv"), (4, "block2/bn"))

ENCODER_RULES = (
    (r"in_conv\.0", "encoder/inconv"),
    (r"in_conv\.1", "encoder/inbn"),
    *((rf"downs\.d{i}\.(\d+)\.{_BLOCK}", rf"encoder/encoder{i + 1}/block\1/\2") for i in range(4)),
    *((rf"downs\.d{i}\.(\d+)\.downsample\.0", rf"encoder/encoder{i + 1}/block\1/downsample_conv")
      for i in range(4)),
    *((rf"downs\.d{i}\.(\d+)\.downsample\.1", rf"encoder/encoder{i + 1}/block\1/downsample_bn")
      for i in range(4)),
    # d4 = Sequential(MaxPool2d, BasicBlock, ...): its blocks are numbered from 1
    *((rf"downs\.d4\.{j}\.{_BLOCK}", rf"encoder/encoder5/block{j - 1}/\1")
      for j in range(1, _MAX_STAGE5_BLOCKS + 1)),
    *((rf"downs\.d4\.{j}\.downsample", f"encoder/encoder5/block{j - 1}/downsample_conv")
      for j in range(1, _MAX_STAGE5_BLOCKS + 1)),
)

DECODER_RULES = (
    *((rf"bottleneck\.double_conv\.{k}", f"decoder/bottleneck/{name}") for k, name in _DOUBLE_CONV),
    *((rf"ups\.u(\d+)\.conv\.double_conv\.{k}", rf"decoder/u\1/conv/{name}")
      for k, name in _DOUBLE_CONV),
    (r"ups\.u(\d+)\.up(\.1)?", r"decoder/u\1/up_conv"),
    (r"out_conv\.0", "decoder/out_conv"),
)

RULES = ENCODER_RULES + DECODER_RULES


def unet_variables(sd: Mapping[str, np.ndarray], target: Mapping,
                   where: str = "official MadisNet UNet") -> dict:
    """jirl UNet variables (`target`'s tree) from an official UNet state_dict."""
    return assign(sd, target, RULES, where=where)


def load_official(path: str, target: Mapping) -> dict:
    """Reads an official UNet state_dict file (e.g. MadisNet's `g_epoch*.pth`) into `target`'s tree."""
    sd = load_state_dict(path)
    if sd and not any(k.startswith("in_conv.") for k in sd):
        raise ConversionError(
            f"{path} does not look like an official MadisNet UNet state_dict (no 'in_conv.*' keys; "
            f"first keys: {sorted(sd)[:3]}); MadisNet(DIRL) and iHDRNet checkpoints do not fit")
    return unet_variables(sd, target, where=path)

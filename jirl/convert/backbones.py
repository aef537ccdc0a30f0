"""ImageNet backbones for the encoders of jirl models: torchvision ResNet34 -> encoder stages 1-4.

A model declares the backbone its encoder takes in its `ModelSpec.backbone`; the training loop
calls `initialize` on a fresh model, so model files never import this (torch is optional).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import numpy as np

from jirl.convert.mapping import assign
from jirl.convert.torch_io import ConversionError, load_state_dict

_BLOCK = r"(conv1|bn1|conv2|bn2)"

# torchvision resnet34: layers 1-4 become encoder stages 1-4 (official `pretrained=True`) of the
# shared `resnet.Encoder`; its 7x7 stem and classifier have no counterpart in jirl's encoders.
RESNET34_RULES = (
    (rf"layer(\d)\.(\d+)\.{_BLOCK}", r"encoder/encoder\1/block\2/\3"),
    (r"layer(\d)\.(\d+)\.downsample\.0", r"encoder/encoder\1/block\2/downsample_conv"),
    (r"layer(\d)\.(\d+)\.downsample\.1", r"encoder/encoder\1/block\2/downsample_bn"),
)
RESNET34_UNUSED = (r"(conv1|bn1)\.\w+", r"fc\.\w+")


def resnet34_variables(resnet_sd: Mapping[str, np.ndarray], target: Mapping,
                       where: str = "torchvision resnet34") -> dict:
    """`target` with encoder stages 1-4 replaced by torchvision ResNet34 layers 1-4."""
    prefixes = [f"{c}/encoder/encoder{i}/" for c in ("params", "batch_stats") for i in range(1, 5)]
    return assign(resnet_sd, target, RESNET34_RULES, skip=RESNET34_UNUSED,
                  required_prefixes=prefixes, where=where)


def load_resnet34(path: str, target: Mapping) -> dict:
    """Initializes encoder stages 1-4 from a torchvision `resnet34` state_dict file."""
    return resnet34_variables(load_state_dict(path), target, where=path)


LOADERS: dict[str, Callable[[str, Mapping], dict]] = {"resnet34": load_resnet34}


def initialize(backbone: str | None, variables: dict, model_cfg: Mapping) -> dict:
    """`variables` with the backbone of `model_cfg.backbone_weights` loaded (unchanged if unset).

    `backbone` is the model's `ModelSpec.backbone`; a weights file for a model that takes none is
    an error rather than silently ignored.
    """
    path = model_cfg.get("backbone_weights", "") or ""
    if not path:
        return variables
    if backbone not in LOADERS:
        raise ConversionError(
            f"config.model.backbone_weights={path!r}, but model {model_cfg.get('name')!r} takes no "
            f"ImageNet backbone; unset it")
    return LOADERS[backbone](path, jax.device_get(variables))

"""ImageNet networks for jirl models: torchvision ResNet34 -> encoder stages 1-4, torchvision
VGG16 -> MadisNet's domain encoder (conv1_1 ... conv3_3).

A model declares what it can start from in its `ModelSpec.pretrained` (which config key names the
file, which loader below, which parameter subtree); the training loop calls `initialize` on a
fresh model, so model files never import this (torch is optional).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

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

# torchvision vgg16: `features.{0,2,5,7,10,12,14}` (conv1_1 ... conv3_3) become the domain
# encoder's partial convs conv0 ... conv6, as the official `PartialConv2d(vgg16.features[i])`.
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14)
VGG16_RULES = tuple((rf"features\.{i}", f"conv{k}") for k, i in enumerate(VGG16_CONVS))
VGG16_UNUSED = (r"features\.(1[6-9]|2\d)\.\w+", r"classifier\.\d+\.\w+")


def _prefixed(rules: Sequence[tuple[str, str]], prefix: str) -> tuple[tuple[str, str], ...]:
    return tuple((p, f"{prefix}/{r}" if prefix else r) for p, r in rules)


def resnet34_variables(resnet_sd: Mapping[str, np.ndarray], target: Mapping, prefix: str = "",
                       where: str = "torchvision resnet34") -> dict:
    """`target` with encoder stages 1-4 (under `prefix`) replaced by torchvision ResNet34 layers 1-4."""
    root = f"{prefix}/" if prefix else ""
    prefixes = [f"{c}/{root}encoder/encoder{i}/" for c in ("params", "batch_stats") for i in range(1, 5)]
    return assign(resnet_sd, target, _prefixed(RESNET34_RULES, prefix), skip=RESNET34_UNUSED,
                  required_prefixes=prefixes, where=where)


def vgg16_variables(vgg_sd: Mapping[str, np.ndarray], target: Mapping, prefix: str = "",
                    where: str = "torchvision vgg16") -> dict:
    """`target` with the partial convs conv0..conv6 under `prefix` replaced by VGG16's
    conv1_1 ... conv3_3 (the deeper convs and the classifier are not used)."""
    root = f"{prefix}/" if prefix else ""
    return assign(vgg_sd, target, _prefixed(VGG16_RULES, prefix), skip=VGG16_UNUSED,
                  required_prefixes=[f"params/{root}conv{k}/" for k in range(len(VGG16_CONVS))],
                  where=where)


LOADERS: dict[str, Callable[..., dict]] = {"resnet34": resnet34_variables, "vgg16": vgg16_variables}


def initialize(pretrained: Sequence, variables: dict, model_cfg: Mapping) -> dict:
    """`variables` with every pretrained network that `model_cfg` names loaded.

    `pretrained` is the model's `ModelSpec.pretrained`; a weights file under a key that the
    model does not take (e.g. `backbone_weights` for a model without an ImageNet encoder) is an
    error rather than silently ignored.
    """
    taken = {p.key for p in pretrained}
    for key in ("backbone_weights", "vgg_weights"):
        if model_cfg.get(key, "") and key not in taken:
            raise ConversionError(
                f"config.model.{key}={model_cfg.get(key)!r}, but model {model_cfg.get('name')!r} "
                f"takes no such ImageNet network; unset it")
    for p in pretrained:
        path = model_cfg.get(p.key, "") or ""
        if path:
            variables = LOADERS[p.kind](load_state_dict(path), jax.device_get(variables),
                                        prefix=p.prefix, where=path)
    return variables

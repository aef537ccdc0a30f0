"""ImageNet backbones into a fresh model: the torchvision .pth files that `config.model` names,
mapped by the model's own `ModelSpec.pretrained` declarations (`jirl.models.Pretrained`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np

from jirl.runtime.mapping import assign
from jirl.runtime.torch_io import ConversionError, load_state_dict

# config.model keys that name ImageNet weights files (a model takes those its spec declares)
WEIGHT_KEYS = ("backbone_weights", "vgg_weights")


def _under(path: str, prefix: str) -> str:
    """"<collection>/<path>" with `prefix` inserted after the collection."""
    collection, _, rest = path.partition("/")
    return "/".join(p for p in (collection, prefix, rest) if p)


def assign_pretrained(pretrained, state_dict: Mapping[str, np.ndarray], variables: Mapping,
                      where: str | None = None) -> dict:
    """`variables` with the subtree of `pretrained` (a `Pretrained`) replaced by `state_dict`'s
    tensors; a ConversionError lists every key that does not fit."""
    prefix = pretrained.prefix
    rules = tuple((p, f"{prefix}/{r}" if prefix else r) for p, r in pretrained.rules)
    return assign(state_dict, variables, rules, skip=pretrained.unused,
                  required_prefixes=[_under(r, prefix) for r in pretrained.required],
                  where=where or f"torchvision {pretrained.kind}")


def load_pretrained(pretrained: Sequence, variables: dict, model_cfg: Mapping) -> dict:
    """`variables` with every ImageNet network that `model_cfg` names a file for loaded.

    `pretrained` is the model's `ModelSpec.pretrained`; a weights file under a key the model does
    not take (e.g. `vgg_weights` for a model without E_dom) is an error rather than ignored.
    """
    taken = {p.key for p in pretrained}
    for key in WEIGHT_KEYS:
        if model_cfg.get(key, "") and key not in taken:
            raise ConversionError(
                f"config.model.{key}={model_cfg.get(key)!r}, but model {model_cfg.get('name')!r} "
                f"takes no such ImageNet network; unset it")
    for p in pretrained:
        path = model_cfg.get(p.key, "") or ""
        if path:
            variables = assign_pretrained(p, load_state_dict(path), jax.device_get(variables),
                                          where=path)
    return variables

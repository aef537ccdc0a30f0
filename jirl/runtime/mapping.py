"""Mapping a flat PyTorch state_dict onto a Flax variables tree, with one complete error report."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
from flax import traverse_util

from jirl.runtime.torch_io import ConversionError

# PyTorch leaf name -> (Flax collection, Flax leaf name); `weight` depends on the tensor's rank.
_LEAVES = {
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
    "gamma": ("params", "gamma"),  # a learned scalar gate (iHDRNet's SelfAttention)
    "weight_u": ("batch_stats", "sn_u"),  # torch.nn.utils.spectral_norm's power-iteration buffers
    "weight_v": ("batch_stats", "sn_v"),
    **{f"{region}_{p}": ("params", f"{region}_{p}")  # RainNet's RAIN
       for region in ("foreground", "background") for p in ("gamma", "beta")},
}
IGNORED_LEAVES = ("num_batches_tracked",)  # BN step counters: no Flax counterpart
MAX_LISTED = 12  # keys listed per kind of problem in an error (then a count)


def _convert_leaf(leaf: str, value: np.ndarray) -> tuple[str, str, np.ndarray]:
    if leaf in ("weight", "weight_orig"):  # weight_orig: the weight under a spectral norm
        if value.ndim == 4:  # Conv2d OIHW -> HWIO
            return "params", "kernel", np.transpose(value, (2, 3, 1, 0))
        if value.ndim == 3:  # Conv1d(1, 1, k) -> [k]
            return "params", "kernel", value.reshape(-1)
        return "params", "scale", value  # BatchNorm affine weight
    if leaf in _LEAVES:
        collection, name = _LEAVES[leaf]
        return collection, name, value
    raise KeyError(leaf)


def rename_module(path: str, rules: Sequence[tuple[str, str]]) -> str | None:
    """The Flax module path ('a/b/c') of a PyTorch module path ('a.0.b'), by the first rule
    whose pattern matches the whole path; None when no rule matches."""
    for pattern, replacement in rules:
        m = re.fullmatch(pattern, path)
        if m:
            return m.expand(replacement)
    return None


def assign(
    source: Mapping[str, np.ndarray],
    target: Mapping,
    rules: Sequence[tuple[str, str]],
    *,
    skip: Sequence[str] = (),
    required_prefixes: Sequence[str] | None = None,
    where: str = "checkpoint",
) -> dict:
    """A copy of `target` ({"params": ..., "batch_stats": ...}) filled from `source`.

    Every source key must be used exactly once (keys matching a `skip` regex, and BN step
    counters, are consumed without a target) and every target leaf (under `required_prefixes`,
    if given) must be filled; otherwise one ConversionError lists every missing key, unexpected
    key and shape mismatch.
    """
    flat_target = traverse_util.flatten_dict(dict(target), sep="/")
    filled: dict[str, np.ndarray] = {}
    unexpected, mismatched, duplicated = [], [], []
    for key, value in source.items():
        module, _, leaf = key.rpartition(".")
        if leaf in IGNORED_LEAVES or any(re.fullmatch(s, key) for s in skip):
            continue
        dest_module = rename_module(module, rules)
        try:
            collection, name, array = _convert_leaf(leaf, np.asarray(value))
        except KeyError:
            dest_module = None
        if dest_module is None:
            unexpected.append(key)
            continue
        dest = f"{collection}/{dest_module}/{name}"
        if dest not in flat_target:
            unexpected.append(f"{key} (-> {dest})")
        elif dest in filled:
            duplicated.append(f"{key} (-> {dest})")
        elif tuple(flat_target[dest].shape) != array.shape:
            mismatched.append(f"{key}: {tuple(value.shape)} -> {dest} expects "
                              f"{tuple(flat_target[dest].shape)}")
        else:
            filled[dest] = array.astype(np.asarray(flat_target[dest]).dtype
                                        if hasattr(flat_target[dest], "dtype") else np.float32)
    wanted = [k for k in flat_target
              if required_prefixes is None or any(k.startswith(p) for p in required_prefixes)]
    missing = sorted(set(wanted) - set(filled))
    if missing or unexpected or mismatched or duplicated:
        lines = [f"{where} does not map onto the jirl model:"]
        for what, keys in (("missing (no source key)", missing), ("unexpected source key", unexpected),
                           ("shape mismatch", mismatched), ("used twice", duplicated)):
            lines += [f"  {what}: {k}" for k in keys[:MAX_LISTED]]
            if len(keys) > MAX_LISTED:
                lines.append(f"  ... and {len(keys) - MAX_LISTED} more {what.split(' (')[0]}")
        raise ConversionError("\n".join(lines))
    out = dict(flat_target)
    out.update(filled)
    tree = traverse_util.unflatten_dict(out, sep="/")
    for collection, value in target.items():  # an empty collection has no leaves to flatten
        tree.setdefault(collection, value)  # (an inference-only RainNet's batch_stats)
    return tree

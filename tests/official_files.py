"""Test tooling: files in the released PyTorch formats made from (tiny) jirl models, so that tests
run what users run: `jirl predict --checkpoint Inharmonious_G.pth,IHDRNet.pth`, `jirl convert`.

Each writer is the inverse of an importer, written from the official key names (the importers'
docstrings list them), not from the importers' rules; `tests/test_official_weights.py` checks
the round trip.
"""

from __future__ import annotations

import os
import re

import jax
import numpy as np

LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def state_dict(variables: dict, module_name, transposed=lambda module: False) -> dict:
    """{official key: numpy array} of jirl `variables` ({"params", "batch_stats"}): each module
    path renamed by `module_name`, kernels HWIO -> OIHW (a ConvTranspose2d's, where
    `transposed(module)`, to [in, out, kh, kw]), BN scale / mean / var to weight / running_*."""
    out = {}
    for path, value in jax.tree_util.tree_flatten_with_path(variables)[0]:
        keys = [p.key for p in path]
        module, leaf = "/".join(keys[1:-1]), keys[-1]
        value = np.asarray(value)
        if leaf == "kernel":
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.reshape(1, 1, -1)
            if transposed(module):
                value = value.transpose(1, 0, 2, 3)
            name = "weight"
        else:
            name = LEAVES.get(leaf, leaf)
        out[f"{module_name(module)}.{name}"] = value
    return out


def save(sd: dict, path) -> str:
    """`sd` as a torch file wrapped as the official trainers save it."""
    import torch

    torch.save({"epoch": 60, "best_acc": 0.7,
                "state_dict": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}},
               path)
    return str(path)


def _subtree(variables: dict, name: str) -> dict:
    return {c: variables.get(c, {}).get(name, {}) for c in ("params", "batch_stats")}


_IHDRNET = ((r"coeffs/splat_(\d+)/(conv|bn)", lambda m: f"coeffs.splat_features.{2 * int(m[1])}.{m[2]}"),
            (r"coeffs/res_(\d+)/(\w+)", lambda m: f"coeffs.res_blks.{m[1]}.{m[2]}"),
            (r"coeffs/sa/(\w+_conv)", lambda m: f"coeffs.sa.{m[1]}"),
            (r"coeffs/sa", lambda m: "coeffs.sa"),
            (r"coeffs/conv_out", lambda m: "coeffs.conv_out.conv"),
            (r"guide/(conv\d)/conv", lambda m: f"guide.{m[1]}.conv"),
            (r"guide/(conv\d)/bn", lambda m: f"guide.{m[1]}.norm"))


def _ihdrnet_name(module: str) -> str:
    for pattern, name in _IHDRNET:
        match = re.fullmatch(pattern, module)
        if match:
            return name(match)
    raise KeyError(module)


def libcom_files(variables: dict, directory) -> tuple[str, str]:
    """A MadisNet(DIRL)'s G and iHDRNet as libcom ships them: `Inharmonious_G.pth` (DIRLNet: the
    DIRL encoder's keys under "encoder.", the decoder's under "decoder.") and `IHDRNet.pth`."""
    from test_convert import official_module_name

    def g_name(module: str) -> str:
        return ("encoder." if module.startswith("encoder/") else "decoder.") + official_module_name(module)

    g = save(state_dict(_subtree(variables, "g"), g_name), os.path.join(directory, "Inharmonious_G.pth"))
    ihdrnet = save(state_dict(_subtree(variables, "ihdrnet"), _ihdrnet_name),
                   os.path.join(directory, "IHDRNet.pth"))
    return g, ihdrnet


def rainnet_generator_file(variables: dict, path) -> str:
    """A RainNet generator as `net_G_last.pth`: model_layer0, model_layer{1,2,3}.1, the nested
    unet_block(.submodule)* (down.1 / up.1 ConvT / upnorm; the innermost block keeps its down
    conv as up.1 and its ConvT as up.3), model_layer1{1,2,3}.1 (ConvT) with their norm and att.0,
    model_out.1 (ConvT)."""
    g = _subtree(variables, "g")
    node, depth = g["params"]["unet_block"], 0
    while "submodule" in node:
        node, depth = node["submodule"], depth + 1
    innermost = "unet_block" + "/submodule" * depth

    def name(module: str) -> str:
        block = re.fullmatch(r"(unet_block(?:/submodule)*)/(down|up|upnorm/rain)", module)
        if block:
            prefix, part = block[1].replace("/", "."), block[2]
            if part == "upnorm/rain":
                return f"{prefix}.upnorm"
            if block[1] == innermost:
                return f"{prefix}.up.{1 if part == 'down' else 3}"
            return f"{prefix}.{part}.1"
        for pattern, official in ((r"layer0", "model_layer0"), (r"layer([123])", r"model_layer\1.1"),
                                  (r"layer(1[123])", r"model_layer\1.1"),
                                  (r"layer(1[123])norm/rain", r"model_layer\1norm"),
                                  (r"layer(1[123])att/conv", r"model_layer\1att.0"),
                                  (r"out", "model_out.1")):
            match = re.fullmatch(pattern, module)
            if match:
                return match.expand(official)
        raise KeyError(module)

    def transposed(module: str) -> bool:
        return (module.endswith("/up") or module == "out"
                or re.fullmatch(r"layer1[123]", module) is not None)

    return save(state_dict(g, name, transposed), path)

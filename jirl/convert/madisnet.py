"""Official MadisNet checkpoints -> jirl MadisNet variables.

The official release saves three files, `g_epoch*.pth` (the localizer: DIRL's `DIRLNet` with its
`encoder.` / `decoder.` parts, or the UNet), `ihdrnet_epoch*.pth` and `domain_encoder_epoch*.pth`,
each `{'epoch', 'best_acc', 'state_dict', 'opt'}`; libcom ships the first two as
`Inharmonious_G.pth` and `IHDRNet.pth` (same formats). Each network fills its subtree of the
MadisNet variables: `g` (by the DIRL or UNet rules), `ihdrnet`, `domain_encoder`.

iHDRNet keys (bcmi/MadisNet-Inharmonious-Region-Localization, `networks/iHDRNet.py`,
`HDRPointwiseNN` state_dict, e.g. `ihdrnet_epochbest.pth`; libcom's `IHDRNet.pth` is the same
network) map one to one onto `jirl.models.ihdrnet.IHDRNet`:

  coeffs.splat_features.{2i}.{conv,bn}    -> coeffs/splat_{i}/{conv,bn}  (odd indices: max-pools)
  coeffs.res_blks.{i}.{conv1,bn1,conv2,bn2} -> coeffs/res_{i}/...
  coeffs.sa.{query,key,value}_conv, .gamma -> coeffs/sa/...
  coeffs.conv_out.conv                    -> coeffs/conv_out
  guide.conv{1,2}.conv, guide.conv1.norm  -> guide/conv{1,2}/conv, guide/conv1/bn
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jirl.convert import dirl, unet
from jirl.runtime.mapping import assign
from jirl.runtime.torch_io import ConversionError, load_state_dict

_MAX_SPLAT_LAYERS = 8  # official: 4 (log2(256 / 16)); the rules cover other jirl configurations

IHDRNET_RULES = (
    *((rf"coeffs\.splat_features\.{2 * i}\.(conv|bn)", rf"coeffs/splat_{i}/\1")
      for i in range(_MAX_SPLAT_LAYERS)),
    (r"coeffs\.res_blks\.(\d+)\.(conv1|bn1|conv2|bn2)", r"coeffs/res_\1/\2"),
    (r"coeffs\.sa\.(query_conv|key_conv|value_conv)", r"coeffs/sa/\1"),
    (r"coeffs\.sa", "coeffs/sa"),  # its gamma
    (r"coeffs\.conv_out\.conv", "coeffs/conv_out"),
    (r"guide\.(conv\d)\.conv", r"guide/\1/conv"),
    (r"guide\.(conv\d)\.norm", r"guide/\1/bn"),
)


def ihdrnet_variables(sd: Mapping[str, np.ndarray], target: Mapping,
                      where: str = "official iHDRNet") -> dict:
    """jirl IHDRNet variables (`target`'s tree) from an official `HDRPointwiseNN` state_dict."""
    return assign(sd, target, IHDRNET_RULES, where=where)


# E_dom (`networks/E_dom.py`): the VGG16 partial convs conv0..conv6 (each also lists its bias
# a second time as `conv{i}.bias`), the adaptors' 1x1 convs and the scale weights `weight`.
DOMAIN_ENCODER_RULES = (
    (r"conv(\d)\.conv", r"conv\1"),
    (r"adaptor(\d)\.conv", r"adaptor\1"),
)


def domain_encoder_variables(sd: Mapping[str, np.ndarray], target: Mapping,
                             where: str = "official E_dom") -> dict:
    """jirl DomainEncoder variables from an official `DomainEncoder` state_dict."""
    sd = dict(sd)
    if "weight" not in sd:
        raise ConversionError(f"{where} does not map onto the jirl model:\n  missing source key: "
                              f"weight (the scale weights); first keys: {sorted(sd)[:3]}")
    weight = sd.pop("weight")
    for k in [k for k in sd if k.count(".") == 1 and k.endswith(".bias") and k.startswith("conv")]:
        alias = sd.pop(k)  # PartialConv2d registers its conv's bias under a second name
        twin = sd.get(k.replace(".bias", ".conv.bias"))
        if twin is None or not np.array_equal(alias, twin):
            raise ConversionError(f"{where}: {k} differs from {k.replace('.bias', '.conv.bias')}")
    out = assign(sd, target, DOMAIN_ENCODER_RULES, where=where,
                 required_prefixes=["params/conv", "params/adaptor"])
    expected = np.shape(target["params"]["weight"])
    if np.shape(weight) != expected:
        raise ConversionError(f"{where}: weight {np.shape(weight)} -> expects {expected}")
    out["params"]["weight"] = np.asarray(weight, np.float32)
    return out


def _subtree(variables: Mapping, name: str) -> dict:
    """{"params", "batch_stats"} of the network `name` (g, ihdrnet, domain_encoder)."""
    return {"params": variables["params"][name],
            "batch_stats": variables.get("batch_stats", {}).get(name, {})}


def localizer_variables(sd: Mapping[str, np.ndarray], target: Mapping, localizer: str,
                        where: str = "official MadisNet g") -> dict:
    """G's variables from an official `g_*.pth` / libcom `Inharmonious_G.pth` state_dict."""
    if localizer == "dirl":
        parts = {"encoder": {}, "decoder": {}}
        for k, v in sd.items():
            head, _, rest = k.partition(".")
            if head not in parts:
                raise ConversionError(f"{where}: key {k!r} is not in DIRLNet's encoder or decoder "
                                      f"(is this a MadisNet(UNet) file? use configs/madisnet.py:unet)")
            parts[head][rest] = v
        return dirl.dirl_variables(parts["encoder"], parts["decoder"], target)
    if localizer == "unet":
        if sd and not any(k.startswith("in_conv.") for k in sd):
            raise ConversionError(f"{where} is not a UNet state_dict (no 'in_conv.*' keys; first "
                                  f"keys: {sorted(sd)[:3]}); for MadisNet(DIRL) use configs/madisnet.py")
        return unet.unet_variables(sd, target, where=where)
    raise ConversionError(f"no official MadisNet checkpoints exist for the localizer {localizer!r} "
                          f"(only dirl and unet)")


def madisnet_variables(g_sd: Mapping, ihdrnet_sd: Mapping, target: Mapping, localizer: str,
                       domain_sd: Mapping | None = None) -> dict:
    """jirl MadisNet variables (`target`'s tree) from the official state_dicts; E_dom keeps
    `target`'s values when `domain_sd` is None (it is used in training only)."""
    parts = {"g": lambda t: localizer_variables(g_sd, t, localizer),
             "ihdrnet": lambda t: ihdrnet_variables(ihdrnet_sd, t)}
    if domain_sd is not None:
        if "domain_encoder" not in target["params"]:
            raise ConversionError("a domain encoder file was given, but the config's MadisNet has "
                                  "none (model.domain_encoder=False)")
        parts["domain_encoder"] = lambda t: domain_encoder_variables(domain_sd, t)
    out = {c: dict(target.get(c, {})) for c in ("params", "batch_stats")}
    for name, fill in parts.items():
        filled = fill(_subtree(target, name))
        for c in out:
            if filled.get(c):
                out[c][name] = filled[c]
    return out


def load_official(g_path: str, ihdrnet_path: str, target: Mapping, localizer: str,
                  domain_encoder_path: str | None = None) -> dict:
    """Reads the official (or libcom) MadisNet files into `target`'s tree."""
    return madisnet_variables(
        load_state_dict(g_path), load_state_dict(ihdrnet_path), target, localizer,
        load_state_dict(domain_encoder_path) if domain_encoder_path else None)


"""Official RainNet checkpoints -> jirl RainNet variables.

Official keys (junleen/RainNet, `models/networks.py`: `RainNet` as `net_G_*.pth`, and
`NLayerDiscriminator` as `net_D_*.pth`) map onto jirl's module tree under "g" and "d":

  model_layer0 / model_layer{1,2,3}.1        -> g/layer0, g/layer{1,2,3}
  unet_block(.submodule)*.down.1             -> g/unet_block(/submodule)*/down
  unet_block(.submodule)*.up.1 (ConvT)       -> g/unet_block(/submodule)*/up
  innermost block: up.1 (conv), up.3 (ConvT) -> .../down, .../up
  unet_block(.submodule)*.upnorm (RAIN)      -> .../upnorm/rain
  model_layer1{1,2,3}.1 / norm / att.0       -> g/layer1{1,2,3}, g/layer1{1,2,3}norm/rain,
                                                g/layer1{1,2,3}att/conv
  model_out.1                                -> g/out
  D.conv{i}[f] (weight_orig, bias, weight_u, weight_v) -> d/conv{i}[f] (params, batch_stats
                                                sn_u / sn_v)
  convl{1,2} (spectral norm), convl3, convg3 -> d/convl{1,2,3}, d/convg3

ConvTranspose2d weights ([in, out, kh, kw]) become [kh, kw, in, out]. Instance norms have no
parameters. `norm="in"` generators have no RAIN parameters, so a RAIN checkpoint does not fit
them (and the reverse): the error lists the RAIN keys.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jirl.runtime.mapping import assign
from jirl.runtime.torch_io import ConversionError, load_state_dict

MAX_BLOCKS = 8  # nested codec blocks the rules cover (official: 4)


def _block_rules() -> list[tuple[str, str]]:
    rules = []
    for depth in range(MAX_BLOCKS):
        src, dst = r"unet_block" + r"\.submodule" * depth, "g/unet_block" + "/submodule" * depth
        rules += [(rf"{src}\.down\.1", f"{dst}/down"), (rf"{src}\.up\.1", f"{dst}/up"),
                  (rf"{src}\.upnorm", f"{dst}/upnorm/rain")]
    return rules


GENERATOR_RULES = (
    (r"model_layer0", "g/layer0"),
    (r"model_layer([123])\.1", r"g/layer\1"),
    *_block_rules(),
    (r"model_layer(1[123])\.1", r"g/layer\1"),
    (r"model_layer(1[123])norm", r"g/layer\1norm/rain"),
    (r"model_layer(1[123])att\.0", r"g/layer\1att/conv"),
    (r"model_out\.1", "g/out"),
)
DISCRIMINATOR_RULES = (
    (r"D\.(conv\d+f?)", r"d/\1"),
    (r"(conv[lg]\d)", r"d/\1"),
)


def _transposed(key: str) -> bool:
    """Whether `key` (after `_canonical_innermost`) is a ConvTranspose2d weight."""
    module, _, leaf = key.rpartition(".")
    transposed = module.endswith(("up.1", "model_out.1")) or module in {
        f"model_layer{i}.1" for i in (11, 12, 13)}
    return leaf == "weight" and transposed


def _canonical_innermost(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The innermost block keeps its down conv in `up` (up.1 conv, up.3 ConvT): renamed to the
    down.1 / up.1 of the other blocks."""
    out = {}
    for key, value in sd.items():
        prefix = key.split(".up.")[0]
        if f"{prefix}.up.3.weight" in sd:
            key = key.replace(".up.1.", ".down.1.").replace(".up.3.", ".up.1.")
        out[key] = value
    return out


def generator_variables(sd: Mapping[str, np.ndarray], target: Mapping,
                        where: str = "official RainNet generator") -> dict:
    """`target` (a jirl RainNet's {"params", "batch_stats"}) with "g" filled from an official
    `RainNet` state_dict; "d" is left as it is."""
    sd = _canonical_innermost(sd)
    sd = {k: np.transpose(v, (1, 0, 2, 3)) if _transposed(k) else v for k, v in sd.items()}
    return assign(sd, target, GENERATOR_RULES, required_prefixes=("params/g/",), where=where)


def discriminator_variables(sd: Mapping[str, np.ndarray], target: Mapping,
                            where: str = "official RainNet discriminator") -> dict:
    """`target` with "d" (params and spectral-norm buffers) filled from an official
    `NLayerDiscriminator` state_dict; "g" is left as it is."""
    return assign(sd, target, DISCRIMINATOR_RULES,
                  required_prefixes=("params/d/", "batch_stats/d/"), where=where)


def load_official(path: str, target: Mapping, discriminator: str | None = None) -> dict:
    """An official `net_G_*.pth` (and optionally `net_D_*.pth`) into `target`'s tree."""
    sd = load_state_dict(path)
    if sd and not any(k.startswith("model_layer0.") for k in sd):
        raise ConversionError(
            f"{path} does not look like an official RainNet generator state_dict (no "
            f"'model_layer0.*' keys; first keys: {sorted(sd)[:3]})")
    variables = generator_variables(sd, target, where=path)
    if discriminator:
        variables = discriminator_variables(load_state_dict(discriminator), variables,
                                            where=discriminator)
    return variables

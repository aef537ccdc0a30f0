"""Official DIRL checkpoints -> jirl DIRL variables.

Official keys (bcmi/DIRL-Inharmonious-Region-Localization, `InharmoniousEncoder` and
`InharmoniousDecoder` state_dicts) map one to one onto jirl's module tree; conv kernels go from
OIHW to HWIO, BN weight/bias/running statistics to scale/bias/mean/var, the ECA Conv1d kernel to
a vector.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jirl.runtime.mapping import assign
from jirl.runtime.torch_io import ConversionError, load_state_dict

_BLOCK = r"(conv1|bn1|conv2|bn2)"

ENCODER_RULES = (
    (r"(inconv|inbn)", r"encoder/\1"),
    (rf"encoder(\d)\.(\d+)\.{_BLOCK}", r"encoder/encoder\1/block\2/\3"),
    (r"encoder(\d)\.(\d+)\.downsample(\.0)?", r"encoder/encoder\1/block\2/downsample_conv"),
    (r"encoder(\d)\.(\d+)\.downsample\.1", r"encoder/encoder\1/block\2/downsample_bn"),
)

DECODER_RULES = (
    (r"trans\.im(\d)\.(\w+)\.conv", r"decoder/trans/im\1/\2/conv"),
    (r"trans\.im(\d)\.(\w+)\.norm", r"decoder/trans/im\1/\2/bn"),
    (r"attention_layers\.mda_(\d)\.ChannelGate\.conv", r"decoder/mda_\1/channel_gate"),
    (r"attention_layers\.mda_(\d)\.SpatialGate\.spatial\.(\d)\.(conv|bn)",
     r"decoder/mda_\1/spatial_gate/conv\2/\3"),
    (r"decoder_layers\.deconv\.decoder\.d(\d)\.(\w+)\.conv", r"decoder/ggd/d\1/\2/conv"),
    (r"decoder_layers\.deconv\.decoder\.d(\d)\.(\w+)\.norm", r"decoder/ggd/d\1/\2/bn"),
    (r"decoder_layers\.deconv\.decoder\.d(\d)\.conv5", r"decoder/ggd/d\1/conv5"),
)



def _check_prefixes(sd: Mapping[str, np.ndarray], expected: str, what: str, path: str) -> None:
    if sd and not any(k.startswith(expected) for k in sd):
        raise ConversionError(
            f"{path} does not look like an official DIRL {what} (no '{expected}*' keys; first "
            f"keys: {sorted(sd)[:3]}); did you swap --encoder and --decoder?")


def dirl_variables(
    encoder_sd: Mapping[str, np.ndarray], decoder_sd: Mapping[str, np.ndarray], target: Mapping,
) -> dict:
    """jirl DIRL variables from the official encoder and decoder state_dicts."""
    source = {**encoder_sd, **decoder_sd}
    if len(source) != len(encoder_sd) + len(decoder_sd):
        raise ConversionError("the encoder and decoder state_dicts share keys")
    return assign(source, target, ENCODER_RULES + DECODER_RULES,
                  where="official DIRL encoder + decoder")


def load_official(encoder_path: str, decoder_path: str, target: Mapping) -> dict:
    """Reads the official `encoder_epoch*.pth` / `decoder_epoch*.pth` files into `target`'s tree."""
    enc, dec = load_state_dict(encoder_path), load_state_dict(decoder_path)
    _check_prefixes(enc, "encoder", "encoder", encoder_path)
    _check_prefixes(dec, "trans.", "decoder", decoder_path)
    return dirl_variables(enc, dec, target)

"""Official MadisNet checkpoints -> jirl variables (so far: the iHDRNet network).

Official keys (bcmi/MadisNet-Inharmonious-Region-Localization, `networks/iHDRNet.py`,
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

from jirl.convert.mapping import assign

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

"""Import of the official PyTorch checkpoints (DIRL, UNet, MadisNet / libcom, RainNet) into jirl
checkpoints: one module of mapping rules per system; `python -m jirl.convert` (`jirl convert`).

torch is an optional extra (`pip install 'jirl[torch]'`). The state_dict reader and the mapping
machinery live in `jirl.runtime` (training reads torchvision backbones with them too).
"""

from jirl.runtime.mapping import assign
from jirl.runtime.torch_io import ConversionError, load_state_dict

__all__ = ["ConversionError", "assign", "load_state_dict"]

"""Import of PyTorch checkpoints (the official releases and torchvision backbones).

torch is an optional extra (`pip install 'jirl[torch]'`); nothing else in jirl needs it.
"""

from jirl.convert.mapping import assign
from jirl.convert.torch_io import ConversionError, load_state_dict

__all__ = ["ConversionError", "assign", "load_state_dict"]

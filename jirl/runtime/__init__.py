"""What training, inference and conversion all stand on, and nothing above them: checkpoint
files and their meta (`checkpoints`), the device mesh (`mesh`), multi-host start-up
(`distributed`), the shared absl flags and config lookup (`flags`, `configs`), and PyTorch
state_dict files (`torch_io`, `mapping`, `pretrained`).

This package imports nothing from `jirl.training`, `jirl.convert`, `jirl.inference` or above.
"""

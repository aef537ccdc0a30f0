"""Reading PyTorch checkpoints safely: `torch.load(weights_only=True)`, never arbitrary pickles."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np


class ConversionError(ValueError):
    """A PyTorch checkpoint that cannot be read or does not map onto the jirl model."""


class TorchMissingError(ConversionError):
    """Reading a PyTorch checkpoint needs torch, which is not installed."""


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise TorchMissingError(
            "reading PyTorch checkpoints needs torch: pip install 'jirl[torch]' "
            "(on a CPU-only machine, pip install torch==2.13.0 first)") from e
    return torch


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """A PyTorch state_dict file as {key: float32/int numpy array}.

    Loads with `weights_only=True` (a file that needs arbitrary unpickling is refused), unwraps
    the official `{'state_dict': ..., 'epoch': ..., 'best_acc': ...}` wrapper and strips
    `module.` prefixes left by DataParallel / DistributedDataParallel.
    """
    torch = _torch()
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise ConversionError(f"checkpoint file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types here
        raise ConversionError(
            f"cannot read {path} as a PyTorch state_dict with weights_only=True: {e}. "
            "jirl never unpickles arbitrary objects; re-save the file with "
            "torch.save(model.state_dict(), path)") from e
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    out = {}
    for key, value in obj.items():
        if not hasattr(value, "detach"):
            raise ConversionError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value.detach().cpu().numpy()
    _check_finite(out, path)
    return out


def _check_finite(state_dict: Mapping[str, np.ndarray], path: str) -> None:
    """Raises ConversionError naming the tensors that hold a NaN or an infinity (a damaged file,
    or one saved from a diverged run, would convert into a model that predicts NaN)."""
    bad = [k for k, v in state_dict.items()
           if np.issubdtype(v.dtype, np.inexact) and not np.isfinite(v).all()]
    if bad:
        raise ConversionError(
            f"{path}: non-finite values (NaN or inf) in {len(bad)} tensor(s): "
            + ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""))

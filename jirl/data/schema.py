"""The data config (`config.data`) checked on every entry point: the pipeline reads what it is
given and supplies no defaults (configs/default.py `data_config()` has every key)."""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Sequence

from jirl.data import transforms
from jirl.data.ihd_lists import CONFIG_NAMES as IHD_CONFIG_NAMES

VALID_SOURCES = ("synthetic", "ihd", "folder")
SPLITS = ("train", "val", "test")  # "val" is carved from the prepared train split
DEFAULT_DATA_DIR = "~/.cache/jirl/tensorflow_datasets"

_MISSING = object()


def _lookup(data_cfg, key: str):
    node = data_cfg
    for part in key.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError):
            return _MISSING
    return node


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_triple(value) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 3
        and all(_is_real(v) for v in value)
    )


def _str_or_none(value) -> bool:
    return value is None or isinstance(value, str)


# key -> (check, what a valid value is). Keys of every source, then per source.
_COMMON_KEYS: dict[str, tuple[Callable, str]] = {
    "source": (lambda v: v in VALID_SOURCES, f"one of {', '.join(VALID_SOURCES)}"),
    "data_dir": (_str_or_none, "a directory (str) or None for $JIRL_DATA_DIR / " + DEFAULT_DATA_DIR),
    "crop_size": (lambda v: _is_int(v) and v >= 1, "an int >= 1 (the model input size, e.g. 224)"),
    "preprocess": (lambda v: v in transforms.PREPROCESS,
                   f"one of {', '.join(transforms.PREPROCESS)} (DIRL's crop + flip, RainNet's resize)"),
    "mean": (_is_triple, "three numbers (per-channel mean of [0, 1] pixels)"),
    "std": (lambda v: _is_triple(v) and all(x > 0 for x in v), "three numbers > 0"),
    "validation_fraction": (
        lambda v: _is_real(v) and 0 <= v < 1,
        "a number in [0, 1): the share of train held out as 'val' (0: no 'val' split)",
    ),
    "validation_seed": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "num_workers": (lambda v: _is_int(v) and v >= 0, "an int >= 0 (0: read in this process)"),
    "num_threads": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "prefetch_batches": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
}
_SOURCE_KEYS: dict[str, dict[str, tuple[Callable, str]]] = {
    "synthetic": {
        "image_size": (lambda v: _is_int(v) and v >= 16, "an int >= 16"),
        "num_train": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
        "num_test": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
        "synthetic_seed": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    },
    "ihd": {
        "ihd.config": (lambda v: v in IHD_CONFIG_NAMES, f"one of {', '.join(IHD_CONFIG_NAMES)}"),
        "ihd.manual_dir": (lambda v: isinstance(v, str), "a directory (str; '' once prepared)"),
        "ihd.strict_counts": (lambda v: isinstance(v, bool), "True or False"),
    },
    "folder": {
        "folder.train": (lambda v: isinstance(v, str), "a directory (str)"),
        "folder.test": (lambda v: isinstance(v, str), "a directory (str; '' until 'test' is read)"),
    },
}


def validate_data_config(data_cfg) -> None:
    """Raises ValueError naming the first missing or invalid ``data.*`` key and what it must be.

    Checks the keys every source reads and those of ``data.source``'s own (configs/default.py
    ``data_config()`` has them all).
    """
    if data_cfg is None:
        raise ValueError("the data config is None; pass config.data (see configs/default.py data_config())")

    def check(key: str, valid: Callable, expected: str) -> None:
        value = _lookup(data_cfg, key)
        if value is _MISSING:
            raise ValueError(
                f"data.{key} is missing from the config; add it ({expected}); configs/default.py "
                "data_config() lists every data key"
            )
        if not valid(value):
            raise ValueError(f"data.{key}={value!r} is invalid: it must be {expected}")

    for key, (valid, expected) in _COMMON_KEYS.items():
        check(key, valid, expected)
    for key, (valid, expected) in _SOURCE_KEYS[data_cfg["source"]].items():
        check(key, valid, expected)


def resolve_data_dir(data_cfg) -> str:
    """``data_cfg.data_dir``, else ``$JIRL_DATA_DIR``, else ``DEFAULT_DATA_DIR``."""
    data_dir = data_cfg["data_dir"] or os.environ.get("JIRL_DATA_DIR") or DEFAULT_DATA_DIR
    return os.path.expanduser(str(data_dir))

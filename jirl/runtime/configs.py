"""Config files by name or by path, from any directory.

`--config dirl:quick` names a config that jirl ships (the top-level `configs/` folder, installed
as the package `jirl.configs`); `--config configs/dirl.py:quick` or `--config my_exp.py:v` is a
file. A path that does not exist but names a shipped config (`configs/<name>.py`, `<name>.py`)
is that config, so the commands of the README work outside the clone too. Everything after the
first `:` is the variant string given to the file's `get_config` (`jirl.configs.common`
parses it).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import types

import ml_collections

PACKAGE = "jirl.configs"
HELPERS = ("__init__", "common")  # modules of the package that are not configs


def packaged_dir() -> str:
    """The folder of the configs jirl ships (the clone's configs/ in an editable install)."""
    return os.path.dirname(importlib.import_module(PACKAGE).__file__)


def available() -> list[str]:
    """The names of the shipped configs (default, dirl, ...)."""
    return sorted(n[:-3] for n in os.listdir(packaged_dir())
                  if n.endswith(".py") and n[:-3] not in HELPERS)


def split(argument: str) -> tuple[str, str | None]:
    """("FILE", "variant") of "FILE:variant", ("FILE", None) without a variant."""
    file, colon, variant = argument.partition(":")
    return file, (variant if colon else None)


def resolve(argument: str) -> str:
    """`argument` ("NAME[:variant]" or "PATH[:variant]") with its file as an absolute path.

    Raises ValueError naming the shipped configs when neither a file nor a shipped config fits.
    """
    file, variant = split(argument)
    if not file:
        raise ValueError("the config is empty: pass a name (e.g. dirl:quick) or a file "
                         "(e.g. configs/dirl.py:quick)")
    expanded = os.path.expanduser(file)
    if os.path.isfile(expanded):
        path = os.path.abspath(expanded)
    else:
        folder, base = os.path.split(expanded)
        name = base[:-3] if base.endswith(".py") else base
        shipped = (folder in ("", "configs") or os.path.basename(folder) == "configs"
                   ) and name in available()
        if not shipped:
            raise ValueError(
                f"no config file {file!r} (looked in {os.getcwd()}) and no config of that name "
                f"ships with jirl; pass one of {', '.join(available())} (e.g. dirl:quick) or "
                "the path of a config file")
        path = os.path.join(packaged_dir(), name + ".py")
    return path if variant is None else f"{path}:{variant}"


def load_module(path: str) -> types.ModuleType:
    """The config file at `path` as a module (its `get_config`, and e.g. an ablation's `ROWS`)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"jirl_config_{stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(argument: str) -> ml_collections.ConfigDict:
    """The config that `--config argument` gives, before any `--config.key=value` override."""
    path, variant = split(resolve(argument))
    module = load_module(path)
    return module.get_config(variant) if variant is not None else module.get_config()

"""Flags shared by train.py and eval.py (absl + ml_collections config files)."""

from __future__ import annotations

import logging as pylogging
import os

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """--config FILE[:variant] (with --config.key=value overrides) and --workdir."""
    config_flags.DEFINE_config_file(
        "config", None, "Experiment config file, e.g. configs/dirl.py or configs/dirl.py:quick.",
        lock_config=True)
    flags.DEFINE_string("workdir", None,
                        "Run directory (checkpoints, logs). Default: runs/<config>[_<variant>].")
    flags.mark_flags_as_required(["config"])


def default_workdir() -> str:
    """runs/<config file stem>[_<variant>], e.g. runs/dirl_quick for configs/dirl.py:quick."""
    path, _, variant = config_flags.get_config_filename(FLAGS["config"]).partition(":")
    stem = os.path.splitext(os.path.basename(path))[0]
    variant = variant.replace(",", "_")
    return os.path.join("runs", f"{stem}_{variant}" if variant else stem)


def workdir() -> str:
    return FLAGS.workdir or default_workdir()


def recipe_warnings(config: ml_collections.ConfigDict) -> list[str]:
    """What keeps a config marked as a publication's recipe (`config.recipe` "official" or
    "paper") from being that recipe: the ImageNet backbone the paper starts from, iHarmony4."""
    recipe = config.get("recipe", "")
    if recipe not in ("official", "paper"):
        return []
    from jirl.models import resolve_spec

    name = config.model.name
    problems = []
    for p in resolve_spec(config.model).pretrained:
        if not config.model.get(p.key, ""):
            problems.append(
                f"the {recipe} {name} recipe starts from ImageNet {p.kind} weights, but "
                f"config.model.{p.key} is unset, so it starts from random weights; pass "
                f"--config.model.{p.key}=<torchvision {p.kind} .pth>")
    if config.data.source != "ihd":
        problems.append(
            f"the {recipe} {name} recipe trains on iHarmony4, but config.data.source is "
            f"{config.data.source!r}; pass --config.data.source=ihd (see README, Data)")
    return problems


def quiet_libraries() -> None:
    """Keeps Orbax / TFDS INFO chatter off the console unless --verbosity asks for it."""
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
        for name in ("", "orbax", "jax", "tensorflow_datasets"):
            pylogging.getLogger(name).setLevel(pylogging.WARNING)

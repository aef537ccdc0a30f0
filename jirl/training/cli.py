"""Flags shared by train.py and eval.py (absl + ml_collections config files)."""

from __future__ import annotations

import logging as pylogging
import os

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
    return os.path.join("runs", f"{stem}_{variant}" if variant else stem)


def workdir() -> str:
    return FLAGS.workdir or default_workdir()


def quiet_libraries() -> None:
    """Keeps Orbax / TFDS INFO chatter off the console unless --verbosity asks for it."""
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
        for name in ("", "orbax", "jax", "tensorflow_datasets"):
            pylogging.getLogger(name).setLevel(pylogging.WARNING)

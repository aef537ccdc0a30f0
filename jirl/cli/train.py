"""jirl train: train a model, resuming from the newest checkpoint in its workdir.

  jirl train --config dirl:quick                      (python train.py --config configs/dirl.py:quick)
  jirl train --config rsrnet --config.batch_size=16 --workdir runs/rsrnet_b16

Overrides: --config.key=value, e.g. --config.num_train_steps=1000 --config.data.crop_size=256.
Several hosts: --coordinator_address / --num_processes / --process_id, or a launcher JAX detects.
"""

from __future__ import annotations

import sys

from absl import flags, logging

from jirl.models import DTYPES
from jirl.runtime import distributed
from jirl.runtime import flags as jflags
from jirl.runtime.checkpoints import CheckpointError
from jirl.runtime.torch_io import ConversionError
from jirl.training.loop import log_summary, train_and_evaluate
from jirl.training.recipe import recipe_warnings

FLAGS = flags.FLAGS


SHORTHANDS = {"dtype": "dtype", "batch_size": "batch_size"}


def define_flags() -> None:
    jflags.define_flags()
    jflags.define_dtype_flag(DTYPES, None, "Compute dtype (= config.dtype; default: the config's).")
    jflags.define_batch_size_flag("Global batch, split over all devices (= config.batch_size; "
                                  "default: the config's).")
    distributed.define_flags()


def main(argv: list[str]) -> None:
    jflags.begin(argv, join_processes=True)
    jflags.apply_to_config(FLAGS.config, SHORTHANDS)
    workdir = jflags.workdir()
    logging.info("workdir: %s", workdir)
    for problem in recipe_warnings(FLAGS.config):
        logging.warning("train: %s", problem)
    try:
        results = train_and_evaluate(FLAGS.config, workdir)
    except (CheckpointError, ConversionError, ValueError) as e:  # a checkpoint, file or data to fix
        if FLAGS["verbosity"].present:  # --verbosity: the traceback too
            raise
        sys.exit(f"train: {e}")
    print(log_summary(results))


def run(argv: list[str] | None = None) -> None:
    """Runs the command (argv: sys.argv by default)."""
    jflags.run_command(main, define_flags, __doc__, argv)

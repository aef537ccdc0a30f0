"""Train a jirl model: python train.py --config configs/dirl.py[:variant] [--workdir DIR].

Resumes automatically from the newest checkpoint in the workdir. Overrides: --config.key=value,
e.g. --config.batch_size=16 --config.num_train_steps=1000 --config.data.crop_size=256.
"""

import sys

from absl import app, flags, logging

from jirl.training import cli, distributed
from jirl.training.checkpoints import CheckpointError
from jirl.training.loop import log_summary, train_and_evaluate

cli.define_flags()
distributed.define_flags()
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.initialize_from_flags()  # before anything touches devices
    cli.quiet_libraries()
    workdir = cli.workdir()
    logging.info("workdir: %s", workdir)
    for problem in cli.recipe_warnings(FLAGS.config):
        logging.warning("train.py: %s", problem)
    try:
        results = train_and_evaluate(FLAGS.config, workdir)
    except CheckpointError as e:  # an unusable --config.init_from or workdir checkpoint
        sys.exit(f"train.py: {e}")
    print(log_summary(results))


if __name__ == "__main__":
    app.run(main)

"""Train a jirl model: python train.py --config configs/dirl.py:quick [--workdir DIR].

The same as `jirl train` (jirl/cli/train.py): resumes from the newest checkpoint in the workdir;
--config.key=value overrides, e.g. --config.batch_size=16 --config.num_train_steps=1000.
"""

from jirl.cli import train

if __name__ == "__main__":
    train.run()

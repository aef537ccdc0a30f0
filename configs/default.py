"""Defaults shared by every experiment; experiment files override what differs.

Used as `python train.py --config configs/<experiment>.py[:variant] --config.key=value`.
"""

import ml_collections


def data_config() -> ml_collections.ConfigDict:
    """The input pipeline's settings (jirl.data.pipeline); the embedded synthetic data by default."""
    from jirl.data.pipeline import default_data_config

    return default_data_config()


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Base configuration; `arg` is unused here (experiment files give variants)."""
    del arg
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"name": ""})
    c.data = data_config()
    c.loss = ml_collections.ConfigDict()

    # Optimizer: PyTorch Adam with L2 weight decay added to the gradient (not AdamW), and a
    # MultiStepLR-style schedule over epochs.
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 1e-4
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 1e-4
    c.optimizer.decay_epochs = (30, 40, 50, 55)
    c.optimizer.decay_factor = 0.5

    c.seed = 42
    c.batch_size = 8  # global batch, split over all devices
    c.num_epochs = 60
    c.dtype = "float32"  # compute dtype; params, BN statistics and losses stay float32

    # Step-based overrides of the epoch-based defaults (-1 = derive from epochs).
    c.num_train_steps = -1  # default: num_epochs * steps_per_epoch
    c.checkpoint_every_steps = -1  # default: once per epoch
    c.eval_every_steps = -1  # default: every 5 epochs (the official save/validate frequency)
    c.log_every_steps = 50

    c.init_from = ""  # an Orbax checkpoint directory to initialise params / BN statistics from

    c.eval = ml_collections.ConfigDict()
    c.eval.split = "test"  # split used for validation during training and by eval.py
    c.eval.batch_size = 8
    c.eval.normalize = True  # the official protocol: min-max normalize each prediction
    c.eval.max_examples = -1  # -1 = the whole split
    return c

"""Defaults shared by every experiment; experiment files override what differs.

Used as `python train.py --config configs/<experiment>.py[:variant] --config.key=value`.
"""

import ml_collections

from jirl.normalization import IMAGENET_MEAN, IMAGENET_STD


def data_config() -> ml_collections.ConfigDict:
    """The input pipeline's settings; the embedded synthetic data by default.

    Plain data: `jirl.data` validates what it receives (unknown sources, splits, sizes).
    """
    d = ml_collections.ConfigDict()
    d.source = "synthetic"  # synthetic | ihd | folder
    # TFDS cache; None: $JIRL_DATA_DIR, else ~/.cache/jirl/tensorflow_datasets
    d.data_dir = ml_collections.config_dict.placeholder(str)
    # The embedded synthetic composites (source="synthetic").
    d.image_size = 256
    d.num_train = 2000
    d.num_test = 200
    d.synthetic_seed = 0
    # Validation: a fixed share of the training split, grouped by real image (two composites of
    # one photo never straddle train and validation), chosen by validation_seed.
    d.validation_fraction = 0.1
    d.validation_seed = 0
    # iHarmony4 (source="ihd"): the TFDS config (le50, all, HAdobe5k, HCOCO, HFlickr, Hday2night)
    # and the extracted download, read once to prepare the data into data_dir. strict_counts:
    # refuse a full-looking copy whose le50 counts differ from 64,255 / 7,237 (default: warn).
    d.ihd = ml_collections.ConfigDict({"config": "le50", "manual_dir": "", "strict_counts": False})
    # Own data (source="folder"): directories of composites + masks (see jirl.data.folder).
    d.folder = ml_collections.ConfigDict({"train": "", "test": ""})
    # Model input: crop (train) / resize (eval) size and the ImageNet normalization.
    d.crop_size = 224
    # "crop": DIRL's RandomResizedCrop + flip for training, a resize for evaluation (cv2 bilinear);
    # "resize": RainNet's whole-image PIL resize for both, mask nearest (jirl.data.transforms).
    d.preprocess = "crop"
    d.mean = IMAGENET_MEAN
    d.std = IMAGENET_STD
    # Loading: num_workers=0 reads in this process (with num_threads prefetch threads);
    # num_workers>0 uses that many Grain worker processes.
    d.num_workers = 0
    d.num_threads = 2
    d.prefetch_batches = 2
    return d


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
    # "multistep": x decay_factor at each of decay_epochs; "linear" (pix2pix / RainNet): constant
    # for constant_epochs, then linearly towards 0 over linear_decay_epochs (per epoch).
    c.optimizer.schedule = "multistep"
    c.optimizer.constant_epochs = 100
    c.optimizer.linear_decay_epochs = 100

    # Which publication's recipe this config is ("official" code, "paper"), "quick" for the CPU
    # demos, "" for anything else. train.py warns when an official/paper recipe runs without the
    # ImageNet backbone weights or iHarmony4 that it needs.
    c.recipe = ""

    c.seed = 42
    c.batch_size = 8  # global batch, split over all devices
    c.num_epochs = 60
    c.dtype = "float32"  # compute dtype; params, BN statistics and losses stay float32

    # Step-based overrides of the epoch-based defaults (-1 = derive from epochs).
    c.num_train_steps = -1  # default: num_epochs * steps_per_epoch
    c.checkpoint_every_steps = -1  # default: once per epoch
    c.eval_every_steps = -1  # default: every eval_every_epochs epochs
    c.eval_every_epochs = 5  # the official save/validate frequency
    c.log_every_steps = 50

    c.init_from = ""  # an Orbax checkpoint directory to initialise params / BN statistics from

    c.eval = ml_collections.ConfigDict()
    c.eval.split = "test"  # the split eval.py scores
    # The split scored during training (logged as <split>/ap, f1, iou) that picks the best
    # checkpoint: "val" (carved from train, see data_config); "test" reproduces the papers'
    # protocol of selecting on the test split.
    c.eval.validation_split = "val"
    c.eval.batch_size = 8
    c.eval.normalize = True  # the official protocol: min-max normalize each prediction
    # Harmonizers: truncate images to 8-bit values before MSE / PSNR / fMSE (RainNet's tensor2im)
    c.eval.quantize = True
    c.eval.max_examples = -1  # -1 = the whole split
    # Every evaluation also scores the trivial baselines (jirl.training.baselines): the mean of
    # prior_examples training masks (evenly spread; -1 = all) and the all-foreground mask.
    c.eval.baselines = True
    c.eval.prior_examples = 2000
    # Also score the model's per-iteration masks (RSRNet: M-bar^1..M-bar^K as "M^1".."M^K"); models
    # without iterations reject it.
    c.eval.per_iteration = False
    return c

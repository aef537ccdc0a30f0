"""RainNet (Ling et al., CVPR 2021) as junleen/RainNet's scripts/train.sh trains it.

  jirl train --config rainnet:quick

Variants (comma-separated): rainnet (official: RAIN, 256 px, iHarmony4 `ihd/all`, batch 11,
100 + 100 epochs); `in` (every RAIN replaced by plain IN: the seed assignment's baseline) or
`rain` (the default, named for the ablation); `quick` (CPU demo sizes on the embedded synthetic
data, scored on its test split after every epoch). The seed's ablation is ROWS below:
`jirl ablation --config rainnet:quick`.
"""

import ml_collections
from jirl.configs import common, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = common.parse_variants(arg, "rainnet", groups={"norm": ("rain", "in")})
    c = default.get_config()
    c.recipe = "official"
    c.model = ml_collections.ConfigDict({
        "name": "rainnet",
        "ngf": 64, "blocks": 4, "norm": "rain", "dropout": 0.5, "attention": True,
        "ndf": 64, "d_strided": 6, "discriminator": True,
    })
    c.data.source = "ihd"
    c.data.ihd.config = "all"
    c.data.crop_size = 256
    c.data.preprocess = "resize"  # --preprocess none: the whole image at 256 px, no crop or flip
    c.data.mean = (0.5, 0.5, 0.5)  # images in [-1, 1]
    c.data.std = (0.5, 0.5, 0.5)
    # wgangp hinge terms + gp_ratio * lambda_gp * gradient penalty (D); lambda_a * adversarial +
    # lambda_v * verification + lambda_l1 * L1 (G)
    c.loss = ml_collections.ConfigDict({"lambda_gp": 10.0, "gp_ratio": 1.0, "lambda_a": 1.0,
                                        "lambda_v": 1.0, "lambda_l1": 100.0})
    c.optimizer.learning_rate = 2e-4
    c.optimizer.b1 = 0.5
    c.optimizer.b2 = 0.999
    c.optimizer.weight_decay = 0.0
    c.optimizer.schedule = "linear"  # constant for constant_epochs, then linearly to 0
    c.optimizer.constant_epochs = 100
    c.optimizer.linear_decay_epochs = 100
    c.batch_size = 11
    c.num_epochs = 200

    c.model.norm = variants.norm or "rain"
    if variants.quick:
        c.recipe = "quick"
        c.data.source = "synthetic"
        c.data.image_size = 64
        c.data.crop_size = 64
        c.data.num_train = 600
        c.data.num_test = 100
        c.model.update(ngf=16, blocks=2, ndf=16, d_strided=4)
        c.batch_size = 8
        c.num_epochs = 8
        c.optimizer.constant_epochs = 4
        c.optimizer.linear_decay_epochs = 4
        # The seed's curves: MSE / PSNR / fMSE on the test split after every epoch.
        c.eval.validation_split = "test"
        c.eval_every_epochs = 1
    return c


# The seed assignment's ablation, `jirl ablation --config rainnet:quick`: plain IN against RAIN
# in the generator, trained the same way, with per-epoch curves.
ROWS = {"in": "the generator with IN (the seed's baseline)",
        "rain": "the generator with RAIN (official)"}
REFERENCE = "in"  # jirl ablation reports RAIN's paired difference from IN

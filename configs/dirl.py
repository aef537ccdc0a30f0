"""DIRL (Liang et al., ICME 2021) with the official training recipe.

  jirl train --config dirl:quick      (or python train.py --config configs/dirl.py:quick)

Variants (comma-separated):
  dirl        the official setting: ResNet34 encoder, ggd_ch 32, batch 8, crop 224, Adam 1e-4
              (L2 1e-4), x0.5 at epochs 30/40/50/55, 60 epochs.
  dirl:quick  a CPU demo (about 10 minutes on 2 cores): narrow model, 32 px synthetic data.
  dirl:paper  the paper's loss (bce + ssim on the mask, 0.1 x attention bce); with quick too.
"""

import ml_collections
from jirl.configs import common, default


def model_config() -> ml_collections.ConfigDict:
    """The official DIRL architecture (53,471,354 parameters)."""
    return ml_collections.ConfigDict({
        "name": "dirl",
        "stem_features": 64,
        "stage_features": (64, 128, 256, 512, 512),
        "stage_blocks": (3, 4, 6, 3, 3),
        "ggd_ch": 32,
        # torchvision resnet34 .pth for encoder stages 1-4 (the official pretrained=True);
        # "" = random initialization
        "backbone_weights": "",
    })


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = default.get_config()
    c.model = model_config()
    c.loss = ml_collections.ConfigDict({
        "variant": "official",  # official: bce + (1 - ssim) + iou on mask and every attention map
        "lambda_attention": 1.0,  # 0 = the official 'vanilla' mda_mode (no attention supervision)
        "lambda_detection": 1.0,
    })
    c.recipe = "official"
    variants = common.parse_variants(arg, "dirl", switches=("paper",))
    if variants.paper:
        c.recipe = "paper"
        c.loss.variant = "paper"
        c.loss.lambda_attention = 0.1  # the paper's weight on the attention maps' BCE
    return quick(c) if variants.quick else c


def quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A small DIRL on 32 px synthetic composites that learns visibly in minutes on a CPU."""
    common.quick_training(c)
    c.model.stem_features = 16
    c.model.stage_features = (16, 32, 64, 96, 96)
    c.model.stage_blocks = (1, 1, 1, 1, 1)
    c.model.ggd_ch = 16
    return c

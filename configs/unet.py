"""UNet baseline (ResNet34 encoder) with the MadisNet code's training recipe.

Official code: bcmi/MadisNet-Inharmonious-Region-Localization (`networks/UNet.py`, built by
`train.py` as `UNet(in_ch=3, n_downs=5)`; `options.py` and `scripts/train.sh` for the settings).

Variants:
  unet        the official setting: ResNet34 encoder + 3 extra 512 blocks (n_downs=5), loss
              bce + iou (lambda_ssim 0, lambda_iou 1), batch 12, 256 px (RandomResizedCrop scale
              0.9-1), Adam 1e-4 (L2 1e-4), x0.5 at epochs 30/40/50/55, 60 epochs.
  unet:quick  a CPU demo with the same data, optimizer and schedule as dirl:quick (so the two
              compare): narrow model, 32 px.
"""

import ml_collections
from jirl.configs import common, default


def model_config() -> ml_collections.ConfigDict:
    """The official UNet architecture (56,720,193 parameters)."""
    return ml_collections.ConfigDict({
        "name": "unet",
        "stem_features": 64,
        "stage_features": (64, 128, 256, 512, 512),
        "stage_blocks": (3, 4, 6, 3, 3),
        # torchvision resnet34 .pth for encoder stages 1-4 (the official resnet34(True));
        # "" = random initialization
        "backbone_weights": "",
    })


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = default.get_config()
    c.model = model_config()
    c.loss = ml_collections.ConfigDict({
        # official train.py: bce + lambda_ssim * (1 - ssim) + lambda_iou * iou on the mask
        "lambda_ssim": 0.0,
        "lambda_iou": 1.0,
        "lambda_detection": 1.0,
    })
    c.batch_size = 12  # scripts/train.sh (options.py default: 8)
    c.data.crop_size = 256  # options.py load_size = crop_size = 256
    c.recipe = "official"
    return quick(c) if common.parse_variants(arg, "unet").quick else c


def quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A small UNet on 32 px synthetic composites, trained as dirl:quick (`common.quick_training`)."""
    common.quick_training(c)
    c.model.stem_features = 16
    c.model.stage_features = (16, 32, 64, 96, 96)
    c.model.stage_blocks = (1, 1, 1, 1, 1)
    return c

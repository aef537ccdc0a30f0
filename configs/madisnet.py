"""MadisNet (Liang et al., AAAI 2022) around a jirl localizer, with the official training recipe.

Variants (comma-separated, e.g. madisnet:quick,rsrnet):
  madisnet         the official setting (train.py, scripts/train.sh): MadisNet(DIRL), iHDRNet
                   (16 luma bins, theta 0.7), E_dom on VGG16 (style_dim 16), loss bce + iou on
                   the mask and the five attention maps + 1e-3 L_ddm (margin 1e-3) + 1e-3 L_di,
                   three Adams 1e-4 (L2 1e-4), x0.5 at epochs 30/40/50/55, 60 epochs, batch 12,
                   256 px. It is the official recipe only with --config.data.source=ihd,
                   --config.model.backbone_weights=<torchvision resnet34 .pth> and
                   --config.model.vgg_weights=<torchvision vgg16 .pth>; `jirl train` warns.
  madisnet:unet    MadisNet(UNet), the paper's other localizer.
  madisnet:rsrnet  MadisNet(RSRNet): RSRNet as G, with its own loss (no such model exists
                   elsewhere).
  madisnet:quick   a CPU demo: the localizer's quick config (data, model, optimizer as
                   dirl:quick) for 14 of its 20 epochs, and a narrow, randomly initialized
                   frozen E_dom.
  madisnet:noddm   no E_dom: the localizer on iHDRNet's I' without L_ddm and L_di (the ablation
                   of the domain-discrepancy losses, ROWS below: jirl ablation --config
                   madisnet:quick --seeds 3).
  madisnet:ddm     E_dom with L_ddm and L_di (the default, named for the ablation).
"""

import ml_collections
from jirl.configs import common, default, dirl, rsrnet, unet

LOCALIZERS = {"dirl": dirl, "unet": unet, "rsrnet": rsrnet}


def ihdrnet_config() -> ml_collections.ConfigDict:
    """The official iHDRNet (`HDRPointwiseNN` with MadisNet's options), 1,472,226 parameters."""
    return ml_collections.ConfigDict({
        "luma_bins": 16,
        "channel_multiplier": 1,
        "splat_layers": 4,  # log2(net_input_size 256 / spatial_bin 16)
        "theta": 0.7,  # central-difference convs
        "residual": False,  # the official ResNetBlock loses its skip; True restores it
        "transposed_grid": True,  # the official slice samples the grid's axes swapped
        "lowres_size": None,  # None: the coefficient net sees the image itself (official)
        "slice_method": "gather",  # "gather" or "onehot": same values (benchmarks/bilateral_slice.py)
    })


# The ablation of the domain-discrepancy losses, `jirl ablation --config madisnet:quick --seeds 3`:
# E_dom with L_ddm and L_di against the localizer on I' alone, trained the same way.
ROWS = {"ddm": "E_dom with L_ddm and L_di (the paper's model)",
        "noddm": "without E_dom: no L_ddm, no L_di"}
REFERENCE = "noddm"  # jirl ablation reports the paired difference that E_dom's losses make


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = common.parse_variants(arg, "madisnet", groups={"localizer": tuple(LOCALIZERS),
                                                              "domain": tuple(ROWS)})
    name = variants.localizer or "dirl"
    quick = variants.quick
    base = LOCALIZERS[name].get_config("quick" if quick else None)
    c = default.get_config() if not quick else base
    localizer = base.model
    del localizer["backbone_weights"]  # MadisNet's model.backbone_weights fills G's encoder
    if name == "dirl":  # MadisNet's copy of DIRL resizes its attention maps with align_corners
        localizer.attention_align_corners = True
    c.model = ml_collections.ConfigDict({
        "name": "madisnet",
        "localizer": localizer,
        "ihdrnet": ihdrnet_config(),
        "style_dim": 16,
        "vgg_features": (64, 64, 128, 128, 256, 256, 256),  # VGG16 conv1_1 ... conv3_3
        "domain_encoder": True,
        # torchvision .pth files: resnet34 for G's encoder stages 1-4, vgg16 for E_dom ("" = random)
        "backbone_weights": "",
        "vgg_weights": "",
    })
    c.loss = base.loss
    if name == "dirl":
        c.loss.mode = "bce_iou"  # loss_weights [1, lambda_ssim = 0, lambda_iou = 1]
    c.loss.lambda_ddm = 1e-3  # lambda_tri
    c.loss.lambda_di = 1e-3  # lambda_reg
    c.loss.ddm_margin = 1e-3  # m
    # Per-group overrides of config.optimizer (groups g, ihdrnet, domain_encoder), e.g.
    # --config.optimizer.groups.ihdrnet.learning_rate=...; officially all three are the same.
    c.optimizer.groups = ml_collections.ConfigDict()
    if quick:
        # random (no ImageNet weights are downloaded), so narrow; and 14 of the other quick
        # configs' 20 epochs (1,890 steps of 16), so that iHDRNet and E_dom fit in 10 minutes
        c.model.vgg_features = (8, 8, 16, 16, 32, 32, 32)
        c.num_epochs = 14
        c.optimizer.decay_epochs = (11, 13)
    else:
        c.batch_size = 12  # scripts/train.sh
        c.data.crop_size = 256
        c.recipe = "official"
    if variants.domain == "noddm":
        c.model.domain_encoder = False
    return c

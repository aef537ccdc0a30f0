"""RSRNet (Wu, Niu, Liang, Zhang, BMVC 2022) with the paper's training recipe.

No official code is public; jirl/models/rsrnet.py documents every choice the paper leaves open.

Variants (comma-separated, e.g. rsrnet:quick,row5):
  rsrnet        the paper's setting: ResNet34 encoder, heads 256, GRU hidden 128, K = 12
                iterations, 4 similarity scales, batch 32, crop 224, Adam 1e-4 (L2 1e-4), x0.5 at
                epochs 30/40/50/55, 60 epochs. It is the paper's recipe only with
                --config.data.source=ihd and --config.model.backbone_weights=<torchvision
                ImageNet resnet34 .pth>; `jirl train` warns when either is missing.
  rsrnet:quick  a CPU demo with the same data, optimizer and schedule as dirl:quick (so the two
                compare): narrow model, 32 px.
  rsrnet:rowN   row N (1-9) of the paper's Table 2 (§4.4), see ROWS; row9 is the full model.
                Combine with quick for the CPU ablation (jirl ablation --config rsrnet:quick).
"""

import ml_collections
from jirl.configs import common, default, unet


def model_config() -> ml_collections.ConfigDict:
    """The paper's RSRNet architecture."""
    return ml_collections.ConfigDict({
        "name": "rsrnet",
        "stem_features": 64,
        "stage_features": (64, 128, 256, 512, 512),
        "stage_blocks": (3, 4, 6, 3, 3),
        "head_features": 256,  # F_s and F_c (§3.2)
        "hidden_features": 128,  # ConvGRU state H
        "embed_features": 64,  # conv3x3 embeddings of the mask and of the similarity map
        "iterations": 12,  # K
        "scales": 4,  # L: similarity windows (2l+1)^2, l = 0..L-1
        # Table 2 ablations (see ROWS)
        "use_gru": True,  # False: H = two 3x3 convs of the GRU input, no recurrent state
        "use_msm": True,  # False: no similarity map in the GRU input (scales=1: a single-scale MSM)
        "content_from": "content",  # "style": F_s in place of F_c
        "similarity_only": False,  # True: M^k = (1 - S_0) / 2, the l = 0 similarity map (no GRU)
        "upsample": "convex",  # "bilinear": bilinear x8 of the RSR logits
        "combine": "learned",  # "average": M_fnl = (M_dec + M_rsr) / 2; "none": M_dec is the output
        "guidance": "concat",  # M_rsr into the decoder: "concat" (§3.3), "residual_attention"
        "remat": False,  # rematerialize each RSR step in the backward pass (memory for compute)
        # lax.scan unroll factor of the K steps: 1 = a rolled loop (best on GPU/TPU); 0 = auto:
        # `iterations` on CPU (XLA:CPU runs the backward of convolutions inside a loop much
        # slower), 1 elsewhere
        "unroll": 0,
        # torchvision resnet34 .pth for encoder stages 1-4; "" = random initialization
        "backbone_weights": "",
    })


# The rows of the paper's Table 2 (§4.4) as config.model switches; row 1 is the plain UNet.
ROWS = {
    "row1": None,  # the UNet (encoder + decoder) with RSRNet's loss, bce + (1 - ssim) + iou
    "row2": dict(combine="none"),  # RSR inserted, M_dec evaluated
    "row3": dict(similarity_only=True, combine="none"),  # only the l = 0 similarity map
    "row4": dict(combine="average"),  # M_fnl = (M_rsr + M_dec) / 2
    "row5": dict(use_gru=False),  # w/o GRU
    "row6": dict(use_msm=False),  # w/o MSM
    "row7": dict(content_from="style"),  # w/o F_c
    "row8": dict(upsample="bilinear"),  # w/o weighted upsample
    "row9": {},  # the full model
}
REFERENCE = "row9"  # jirl ablation compares every row with the full model, seed by seed


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = default.get_config()
    c.model = model_config()
    c.loss = ml_collections.ConfigDict({
        "mode": "bce_ssim_iou",  # l = bce + (1 - ssim) + iou on every mask
        "decay": 0.8,  # weight decay^(K-k) of the k-th RSR mask
    })
    c.batch_size = 32
    c.data.crop_size = 224
    c.recipe = "paper"  # train.py warns when the paper's recipe runs without ImageNet weights or iHarmony4
    variants = common.parse_variants(arg, "rsrnet", groups={"row": tuple(ROWS)})
    if variants.quick:
        c = quick(c)
    return table2_row(c, variants.row) if variants.row else c


def table2_row(c: ml_collections.ConfigDict, row: str) -> ml_collections.ConfigDict:
    """`c` changed into row `row` of Table 2; row 1 swaps RSRNet for the UNet of the same widths."""
    if ROWS[row] is not None:
        c.model.update(ROWS[row])
        return c
    model = unet.model_config()
    for key in model:
        if key != "name":
            model[key] = c.model[key]
    c.model = model
    c.loss = unet.get_config().loss
    c.loss.lambda_ssim = 1.0  # RSRNet's l = bce + (1 - ssim) + iou
    return c


def quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A small RSRNet on 32 px synthetic composites, trained as dirl:quick (`common.quick_training`)."""
    common.quick_training(c)
    c.model.stem_features = 16
    c.model.stage_features = (16, 32, 64, 96, 96)
    c.model.stage_blocks = (1, 1, 1, 1, 1)
    c.model.head_features = 32
    c.model.hidden_features = 32
    c.model.embed_features = 16
    return c

"""RSRNet (Wu, Niu, Liang, Zhang, BMVC 2022) with the paper's training recipe.

No official code is public; jirl/models/rsrnet.py documents every choice the paper leaves open.

Variants:
  configs/rsrnet.py        the paper's setting: ResNet34 encoder, heads 256, GRU hidden 128,
                           K = 12 iterations, 4 similarity scales, batch 32, crop 224, Adam 1e-4
                           (L2 1e-4), x0.5 at epochs 30/40/50/55, 60 epochs.
  configs/rsrnet.py:quick  a CPU demo with the same data, optimizer and schedule as
                           configs/dirl.py:quick (so the two are comparable): narrow model, 48 px.

Ablations of the paper's Table 2 are config.model switches, e.g. --config.model.use_gru=False,
use_msm=False, content_from=style, upsample=bilinear, combine=average, similarity_only=True.
"""

import ml_collections

from configs import default


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
        # Table 2 ablations
        "use_gru": True,  # False: H = two 3x3 convs of the GRU input, no recurrent state
        "use_msm": True,  # False: only the pixel-wise similarity (l = 0)
        "content_from": "content",  # "style": F_s in place of F_c
        "similarity_only": False,  # True: the GRU sees only the similarity map
        "upsample": "convex",  # "bilinear": bilinear x8 of the RSR logits
        "combine": "learned",  # "average": M_fnl = (M_dec + M_rsr) / 2
        "remat": False,  # rematerialize each RSR step in the backward pass (memory for compute)
        # lax.scan unroll factor of the K steps: 1 = a rolled loop (best on GPU/TPU); 0 = auto:
        # `iterations` on CPU (XLA:CPU runs the backward of convolutions inside a loop ~30x
        # slower), 1 elsewhere
        "unroll": 0,
        # torchvision resnet34 .pth for encoder stages 1-4; "" = random initialization
        "backbone_weights": "",
    })


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = default.get_config()
    c.model = model_config()
    c.loss = ml_collections.ConfigDict({
        "mode": "bce_ssim_iou",  # l = bce + (1 - ssim) + iou on every mask
        "decay": 0.8,  # weight decay^(K-k) of the k-th RSR mask
    })
    c.batch_size = 32
    c.data.crop_size = 224
    if arg in (None, "", "full"):
        return c
    if arg == "quick":
        return quick(c)
    raise ValueError(f"unknown variant {arg!r} of configs/rsrnet.py; use '' or 'quick'")


def quick(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A small RSRNet on 48 px synthetic composites; data/optimizer/schedule as configs/dirl.py:quick."""
    from configs import dirl

    c.model.stem_features = 16
    c.model.stage_features = (16, 32, 64, 96, 96)
    c.model.stage_blocks = (1, 1, 1, 1, 1)
    c.model.head_features = 32
    c.model.hidden_features = 32
    c.model.embed_features = 16
    reference = dirl.quick(dirl.get_config())
    for key in reference:  # everything but the model and its loss: data, optimizer, schedule, eval
        if key not in ("model", "loss"):
            c[key] = reference[key]
    return c

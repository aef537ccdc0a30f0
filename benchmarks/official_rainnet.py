"""The official RainNet side of `compare_official.py` (junleen/RainNet).

It builds the official `RainNetModel` from your clone (nothing of it is part of jirl), with the
options `scripts/train.sh` trains with (the option parser itself is not run: it needs the
dataset root, a GPU id and the data package): `--model rainnet --netG rainnet --normG RAIN
--normD instance --gan_mode wgangp --input_nc 3 --lambda_L1 100` and the option defaults
(ngf 64, ndf 64, n_layers_D 3, init normal 0.02, lr 2e-4, beta1 0.5, gp_ratio 1, lambda_a 1,
lambda_v 1, dropout on), on the CPU (`gpu_ids=[]`). So G is `networks.define_G(3, 3, ngf,
'rainnet', 'RAIN', ...)` and D `networks.NLayerDiscriminator(3, ndf, 3, instance norm)` through
`init_net`, each with its own `torch.optim.Adam(lr, betas=(beta1, 0.999))`, as the model makes
them; ngf, ndf, the norm, dropout, the learning rates, beta1 and the loss weights come from the
jirl config (`official_options`), and `config_problems` refuses what the official code cannot
represent.

A train step is `RainNetModel.optimize_parameters()` unchanged, on a batch given to `set_input`
as the official dataset makes it (comp = image * M + real * (1 - M)): the forward, the D step
(`backward_D`, wgangp: hinge terms of both heads + gradient penalty) then the G step
(`backward_G`: -D + 100 L1). Inference is `netG.processImage(image, mask)` (G, then
output * M + image * (1 - M)) with G in eval mode under no_grad.

Patched at run time (the clone is not modified): `backward_D` passes the device 'cuda' to
`networks.cal_gradient_penalty`, so `networks.cal_gradient_penalty` is wrapped to run on the
device of its inputs instead (the CPU here); everything else runs as written.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

REQUIRED_FILES = ("models/__init__.py", "models/base_model.py", "models/networks.py",
                  "models/normalize.py", "models/rainnet_model.py")
# RainNetModel's loss names (its `loss_names`) plus the two totals
LOSS_NAMES = ("G_GAN", "G_L1", "D_real", "D_fake", "D_gp", "D_global", "D_local", "G_global",
              "G_local", "D", "G")
# config.model keys the official side follows; the others must equal configs/rainnet.py's
FREE_MODEL_KEYS = ("ngf", "ndf", "norm", "dropout")
# config.loss keys the official side follows (its options); lambda_gp is cal_gradient_penalty's
# default (10), which backward_D does not pass
FREE_LOSS_KEYS = ("gp_ratio", "lambda_a", "lambda_v", "lambda_l1")
NORM_G = {"rain": "RAIN", "in": "instance"}  # jirl model.norm -> the official --normG


def patch_gradient_penalty(networks) -> None:
    """`networks.cal_gradient_penalty` on the device of its inputs: `backward_D` hard-codes
    'cuda' (the device of alpha and of the gradient's ones); nothing else changes."""
    original = networks.cal_gradient_penalty
    if getattr(original, "_jirl_on_input_device", False):
        return

    def on_input_device(netD, real_data, fake_data, device, *args, **kwargs):
        del device  # 'cuda' in backward_D
        return original(netD, real_data, fake_data, real_data.device, *args, **kwargs)

    on_input_device._jirl_on_input_device = True
    networks.cal_gradient_penalty = on_input_device


def official_options(msg: dict) -> argparse.Namespace:
    """The options RainNetModel reads: scripts/train.sh's, with the widths, learning rates, beta1
    and loss weights of the jirl config (`official_message`), on the CPU."""
    return argparse.Namespace(
        # BaseModel
        gpu_ids=[], isTrain=True, checkpoints_dir=os.devnull, name="benchmark", preprocess="none",
        # define_G / NLayerDiscriminator / init_net
        input_nc=3, output_nc=3, ngf=msg["ngf"], ndf=msg["ndf"], netG="rainnet",
        normG=msg["normG"], normD="instance", no_dropout=msg["no_dropout"], init_type="normal",
        init_gain=0.02, n_layers_D=3,
        # losses and optimizers
        gan_mode="wgangp", lr=msg["lr"], g_lr_ratio=msg["g_lr_ratio"], d_lr_ratio=msg["d_lr_ratio"],
        beta1=msg["beta1"], lambda_L1=msg["lambda_l1"], gp_ratio=msg["gp_ratio"],
        lambda_a=msg["lambda_a"], lambda_v=msg["lambda_v"])


class OfficialRainNet:
    """The official RainNetModel (G, D, their Adams, optimize_parameters) on one batch."""

    def __init__(self, repo: str, msg: dict, image, mask, real):
        import torch

        sys.path.insert(0, repo)
        try:
            from models import networks
            from models.rainnet_model import RainNetModel
        except ImportError as e:
            raise RuntimeError(f"importing the official RainNet from {repo} failed ({e!r})") from e
        patch_gradient_penalty(networks)
        self.torch = torch
        torch.manual_seed(msg["seed"])
        self.opt = official_options(msg)
        self.model = RainNetModel(self.opt)
        self.image, self.mask, self.real = image, mask, real
        # the official dataset's re-composition (the composite's background is the real one)
        self.model.set_input({"comp": image * mask + real * (1 - mask), "real": real, "mask": mask})
        nets = (self.model.netG, self.model.netD)
        self.params = int(sum(p.numel() for n in nets for p in n.parameters()))
        adams = [f"{name}: torch.optim.Adam({o.defaults['lr']:g}, betas={o.defaults['betas']}, "
                 f"eps={o.defaults['eps']:g}, weight_decay={o.defaults['weight_decay']:g})"
                 for name, o in (("G", self.model.optimizer_G), ("D", self.model.optimizer_D))]
        self.optimizer_text = "; ".join(adams)
        self.loss_text = ("RainNetModel.optimize_parameters (gan_mode wgangp: D hinge + "
                          f"{self.opt.gp_ratio:g} x 10 x gradient penalty; G -{self.opt.lambda_a:g} "
                          f"D_global - {self.opt.lambda_v:g} D_verify + {self.opt.lambda_L1:g} L1)")

    def losses(self) -> dict:
        """The last step's losses as floats: "loss" is G's (jirl's logs["loss"] is its last
        phase's, G's), "loss_D" / "loss_G" the two totals, and the official loss_names."""
        out = {f"loss_{n}" if n in ("D", "G") else n: float(getattr(self.model, f"loss_{n}"))
               for n in LOSS_NAMES}
        return {"loss": out["loss_G"], **out}

    def train(self, n: int, autocast=contextlib.nullcontext) -> dict:
        """n official train steps (`optimize_parameters`: forward, D step, G step): seconds and
        the last step's losses."""
        del autocast  # compare_official refuses --official_amp for RainNet
        self.model.netG.train()
        self.model.netD.train()
        t0 = time.perf_counter()
        for _ in range(n):
            self.model.optimize_parameters()
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "losses": self.losses()}

    def infer(self, n: int, autocast=contextlib.nullcontext) -> dict:
        """n forwards of `netG.processImage(image, mask)`, G in eval mode under no_grad (and
        `autocast`, torch.autocast('cpu', bfloat16) for a bf16 comparison): seconds."""
        g = self.model.netG
        g.eval()
        t0 = time.perf_counter()
        with self.torch.no_grad(), autocast():
            for _ in range(n):
                g.processImage(self.image, self.mask)
        return {"seconds": time.perf_counter() - t0}


def _group(config, name: str):
    """config.optimizer with its `groups.<name>` overrides (jirl.training.optim.group_config)."""
    opt = config.optimizer
    merged = {k: v for k, v in opt.items() if k != "groups"}
    merged.update(dict(opt.get("groups", {}).get(name, {}) or {}))
    return merged


def official_message(config) -> dict:
    """What the official side takes from a jirl RainNet config (see `official_options`)."""
    model, loss = config.model, config.loss
    g, d = _group(config, "g"), _group(config, "d")
    lr = float(config.optimizer.learning_rate)
    return {"ngf": int(model.ngf), "ndf": int(model.ndf), "normG": NORM_G.get(model.norm, model.norm),
            "no_dropout": not model.dropout, "lr": lr,
            "g_lr_ratio": float(g["learning_rate"]) / lr, "d_lr_ratio": float(d["learning_rate"]) / lr,
            "beta1": float(g["b1"]), "lambda_l1": float(loss.lambda_l1),
            "gp_ratio": float(loss.gp_ratio), "lambda_a": float(loss.lambda_a),
            "lambda_v": float(loss.lambda_v)}


def config_problems(config, mismatch) -> list[str]:
    """Why a jirl RainNet config is not what the official side can run (empty: it can).

    The official code has one G layout (four codec blocks, attention gates, dropout 0.5 or none)
    and one D layout (six stride-2 convs); --normG RAIN or instance; cal_gradient_penalty's
    lambda_gp 10; one beta1 for both Adams, beta2 0.999, torch's eps 1e-8 and no weight decay.
    """
    from jirl.configs import rainnet as rainnet_config

    reference = rainnet_config.get_config("")
    model = config.model
    problems = [f"model.{k} (the official code has only {reference.model[k]!r})"
                for k in mismatch(model, reference.model) if k not in FREE_MODEL_KEYS]
    if model.get("norm") not in NORM_G:
        problems.append(f"model.norm={model.get('norm')!r} (the official --normG: 'rain' = RAIN or "
                        "'in' = instance)")
    if model.get("dropout") not in (0, 0.5):
        problems.append(f"model.dropout={model.get('dropout')!r} (the official G has dropout 0.5, "
                        "or none with --no_dropout)")
    problems += [f"loss.{k} (the official code has only {reference.loss.get(k)!r})"
                 for k in mismatch(config.loss, reference.loss) if k not in FREE_LOSS_KEYS]
    problems += [f"loss.{k} (not an official loss term)" for k in config.loss
                 if k not in reference.loss]
    g, d = _group(config, "g"), _group(config, "d")
    for name, opt in (("g", g), ("d", d)):
        where = f"optimizer.groups.{name}" if name in config.optimizer.get("groups", {}) else "optimizer"
        for key, value, text in (("b2", 0.999, "beta2 0.999"), ("eps", 1e-8, "torch's eps 1e-8"),
                                 ("weight_decay", 0.0, "no weight decay")):
            if float(opt[key]) != value:
                problems.append(f"{where}.{key}={opt[key]!r} (the official Adams have {text})")
    if float(g["b1"]) != float(d["b1"]):
        problems.append("optimizer b1 differs between the groups g and d (the official --beta1 is "
                        "one for both Adams)")
    return list(dict.fromkeys(problems))  # once each (a setting both groups share)


def size_problem(size: int) -> str | None:
    """Why the official networks cannot run at `size` px (None: they can): G's 4 + 4 stride-2
    steps need a multiple of 256, D's six unpadded stride-2 convs at least 255 px."""
    if size % 256:
        return (f"--size={size}: the official RainNet runs only at multiples of 256 px (its generator "
                "halves the image eight times; its discriminator needs >= 255 px)")
    return None

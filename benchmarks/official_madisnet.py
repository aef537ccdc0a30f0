"""The official MadisNet side of `compare_official.py` (bcmi/MadisNet-Inharmonious-Region-Localization).

It builds the networks as the official `train.py` builds them, from your clone (nothing of it is
part of jirl): `DIRLNet(opt, 3)` (backbone resnet34, ggd_ch from the jirl config, mda_mode
'mask') or `UNet(in_ch=3, n_downs=5)` as G, `HDRPointwiseNN(opt)` (16 luma bins, theta 0.7) and
`DomainEncoder(style_dim=16)` (VGG16 conv1_1...conv3_3, frozen), with one
`torch.optim.Adam(lr, betas, weight_decay)` per network. torchvision's `resnet34` / `vgg16` are
patched to build with random weights, so that `pretrained=True` downloads nothing.

A train step is `Trainer.train_epoch`'s: `Trainer.forward(img, mask)` (I' = ihdrnet(img, img),
G's masks on I', E_dom's four codes), `multi_bce_loss_fusion` on the mask (and, for DIRL, on the
five attention maps) with `loss_weights=[1, lambda_ssim, lambda_iou]`, + lambda_tri L_ddm +
lambda_reg L_di, backward, the three Adams. `train.py` imports tensorboardX and the dataset
code, so its loss functions are read from the file with `ast` and executed unchanged; the L_ddm /
L_di lines follow `train_epoch`. Inference is `Trainer.forward(img)` in eval mode under no_grad.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import sys
import time

REQUIRED_FILES = ("train.py", "networks/__init__.py", "networks/iHDRNet.py", "networks/E_dom.py",
                  "pytorch_ssim/__init__.py", "pytorch_iou/__init__.py")
LOSS_NAMES = ("bce_loss", "ssim_loss", "iou_loss", "bce_ssim_loss", "multi_bce_loss_fusion")


def without_download(module, name: str) -> None:
    """Patches torchvision.models.<name> to build with random weights (pretrained / weights ignored)."""
    import inspect

    original = getattr(module, name)
    if getattr(original, "_jirl_no_download", False):
        return
    takes_weights = "weights" in inspect.signature(original).parameters

    def build(*_pretrained, **kwargs):  # positional / keyword `pretrained` and `weights` dropped
        kwargs.pop("pretrained", None)
        kwargs.pop("weights", None)
        return original(weights=None, **kwargs) if takes_weights else original(pretrained=False, **kwargs)

    build._jirl_no_download = True
    setattr(module, name, build)


def train_py_losses(repo: str) -> dict:
    """`train.py`'s module-level losses and loss functions, executed unchanged."""
    import pytorch_iou
    import pytorch_ssim
    import torch
    from torch import nn

    path = os.path.join(repo, "train.py")
    with open(path) as f:
        tree = ast.parse(f.read(), path)

    def wanted(node) -> bool:
        if isinstance(node, ast.FunctionDef):
            return node.name in LOSS_NAMES
        return isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) in LOSS_NAMES

    namespace = {"torch": torch, "nn": nn, "pytorch_ssim": pytorch_ssim, "pytorch_iou": pytorch_iou}
    exec(compile(ast.Module(body=[n for n in tree.body if wanted(n)], type_ignores=[]), path, "exec"),
         namespace)
    missing = [n for n in LOSS_NAMES if n not in namespace]
    if missing:
        raise RuntimeError(f"{path} does not define {missing} (not the official MadisNet train.py?)")
    return namespace


class OfficialMadisNet:
    """The official G, iHDRNet and E_dom, their three Adams and `train_epoch`'s loss on one batch."""

    def __init__(self, repo: str, msg: dict, image, mask):
        import torch
        import torchvision.models

        for name in ("resnet34", "vgg16"):
            without_download(torchvision.models, name)
        sys.path.insert(0, repo)
        from networks import DIRLNet, DomainEncoder, HDRPointwiseNN, UNet

        self.torch = torch
        self.losses = train_py_losses(repo)
        torch.manual_seed(msg["seed"])
        opt = argparse.Namespace(backbone="resnet34", ggd_ch=msg["ggd_ch"], mda_mode="mask",
                                 luma_bins=16, channel_multiplier=1, spatial_bin=16, batch_norm=True,
                                 net_input_size=256, theta=0.7)
        self.localizer = msg["localizer"]
        self.nets = {"g": DIRLNet(opt, 3) if self.localizer == "dirl" else UNet(in_ch=3, n_downs=5),
                     "ihdrnet": HDRPointwiseNN(opt)}
        if msg["domain_encoder"]:
            self.nets["domain_encoder"] = DomainEncoder(style_dim=16)
        adam = dict(lr=msg["lr"], betas=(msg["b1"], msg["b2"]), eps=msg["eps"],
                    weight_decay=msg["weight_decay"])
        self.optimizers = [torch.optim.Adam(n.parameters(), **adam) for n in self.nets.values()]
        self.weights = msg["loss_weights"]
        self.lambdas = {k: msg[k] for k in ("lambda_ddm", "lambda_di", "ddm_margin")}
        self.image, self.mask = image, mask
        self.params = int(sum(p.numel() for n in self.nets.values() for p in n.parameters()))
        self.optimizer_text = f"{len(self.optimizers)} x torch.optim.Adam({adam})"
        self.loss_text = ("train.py multi_bce_loss_fusion (mask" + (" + attention maps" if
                          self.localizer == "dirl" else "") + ") + L_ddm + L_di")

    def _mode(self, train: bool) -> None:
        for net in self.nets.values():
            net.train(train)

    def train_step(self, autocast) -> dict:
        """One step of `Trainer.train_epoch`: the losses as floats."""
        fusion = self.losses["multi_bce_loss_fusion"]
        for o in self.optimizers:
            o.zero_grad()
        with autocast():
            retouched, _ = self.nets["ihdrnet"](self.image, self.image)
            preds = [p.float() for p in self.nets["g"](retouched)["mask"]]
        detection = fusion(preds[:1], self.mask, loss_weights=self.weights)["total"]
        total = detection
        logs = {"detection": detection}
        if self.localizer == "dirl":
            logs["attention"] = fusion(preds[1:], self.mask, loss_weights=self.weights)["total"]
            total = total + logs["attention"]
        if "domain_encoder" in self.nets:
            encode = self.nets["domain_encoder"]
            z_b, z_f = encode(self.image, 1 - self.mask), encode(self.image, self.mask)
            z_mb, z_mf = encode(retouched, 1 - self.mask), encode(retouched, self.mask)
            z_fb, z_mfmb = z_f - z_b, z_mf - z_mb
            distance = (z_fb ** 2).sum(dim=1, keepdim=True)
            magnified = (z_mfmb ** 2).sum(dim=1, keepdim=True)
            norms = self.torch.norm(z_fb, dim=1, keepdim=True) * self.torch.norm(z_mfmb, dim=1, keepdim=True)
            logs["di"] = (1 - (z_fb * z_mfmb).sum(dim=1, keepdim=True) / (norms + 1e-6)).mean()
            logs["ddm"] = self.torch.relu(distance - magnified + self.lambdas["ddm_margin"]).mean()
            total = total + self.lambdas["lambda_ddm"] * logs["ddm"] + self.lambdas["lambda_di"] * logs["di"]
        total.backward()
        for o in self.optimizers:
            o.step()
        return {"loss": total.item(), **{k: v.item() for k, v in logs.items()}}

    def train(self, n: int, autocast=contextlib.nullcontext) -> dict:
        self._mode(True)
        t0 = time.perf_counter()
        for _ in range(n):
            losses = self.train_step(autocast)
        return {"seconds": time.perf_counter() - t0, "losses": losses}

    def infer(self, n: int, autocast=contextlib.nullcontext) -> dict:
        """n forwards of `Trainer.forward(img)` in eval mode under no_grad (test.py): seconds."""
        self._mode(False)
        t0 = time.perf_counter()
        with self.torch.no_grad(), autocast():
            for _ in range(n):
                retouched, _ = self.nets["ihdrnet"](self.image, self.image)
                self.nets["g"](retouched)["mask"][0]
        return {"seconds": time.perf_counter() - t0}


def official_message(config) -> dict:
    """What the official side takes from a jirl MadisNet config."""
    loss = config.loss
    return {"localizer": config.model.localizer.name,
            "ggd_ch": int(config.model.localizer.get("ggd_ch", 32)),
            "domain_encoder": bool(config.model.domain_encoder),
            # multi_bce_loss_fusion's [bce, lambda_ssim, lambda_iou] for loss.mode bce_iou
            "loss_weights": [1.0, 0.0, 1.0],
            "lambda_ddm": float(loss.lambda_ddm), "lambda_di": float(loss.lambda_di),
            "ddm_margin": float(loss.ddm_margin)}


def config_problems(config, mismatch) -> list[str]:
    """Why a jirl MadisNet config is not what the official side runs (empty: it is)."""
    from jirl.configs import madisnet as madisnet_config

    model = config.model
    name = model.localizer.name
    if name not in ("dirl", "unet"):
        return [f"the official MadisNet has no {name!r} localizer (only dirl and unet)"]
    reference = madisnet_config.get_config("" if name == "dirl" else name)
    problems = [f"model.{k}" for k in mismatch(model, reference.model)
                if k not in ("localizer", "ihdrnet", "domain_encoder", "backbone_weights", "vgg_weights")]
    problems += [f"model.localizer.{k}" for k in mismatch(model.localizer, reference.model.localizer)
                 if k not in ("ggd_ch", "backbone_weights")]
    problems += [f"model.ihdrnet.{k}" for k in mismatch(model.ihdrnet, reference.model.ihdrnet)
                 if k != "slice_method"]
    problems += [f"loss.{k}" for k in mismatch(config.loss, reference.loss)
                 if k not in ("lambda_ddm", "lambda_di", "ddm_margin")]
    return problems

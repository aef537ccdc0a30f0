"""RainNet: region-aware adaptive instance normalization for image harmonization (Ling, Xue, Song,
Xie, Gu, CVPR 2021).

Official code: junleen/RainNet (`models/networks.py`, `models/normalize.py`,
`models/rainnet_model.py`). Harmonization, not localization: given the composite and its
foreground mask M, the generator re-renders the image and the output keeps its foreground only,
harmonized = G(comp, M) * M + comp * (1 - M) (the official `processImage` / `attentioned`).
  * RAIN (§3.2, Eq. 3; `normalize.py`): the foreground's feature statistics are normalized and
    re-targeted to the background's, per sample and channel, with learned (1 + gamma), beta per
    region; the mask reaches the generator only through RAIN (`--input_nc 3`).
  * The generator (§3.1, Fig. 2): a U-Net; IN in the encoder, nested codec blocks with dropout in
    the bottleneck, RAIN in all seven decoder norms, attention gates on the decoder's skips, tanh.
    `norm="in"` replaces every RAIN by plain IN: the seed assignment's baseline.
  * The discriminator (the official `NLayerDiscriminator` / `OrgDiscriminator`): a global branch
    of spectral-norm partial convs over the whole image, and a verification branch whose own
    partial convs run on the foreground and on the background; the similarity of the two codes
    goes through two spectral-norm 1x1 convs. Training only.
Training (`rainnet_model.py`, gan_mode "wgangp" as train.sh runs it): a discriminator step (hinge
terms for both heads + 10 * gradient penalty on a per-sample interpolation) then a generator step
(-D of both heads + 100 * L1) on the same batch, one Adam each.

Depth is configurable so that small images work: the official generator has four nested codec
blocks below a 16x16 encoder output (256 px), the official discriminator six stride-2 convs before
a stride-1 one (256 px -> 1x1). `small_config` sizes both for 32-64 px CPU tests.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jirl.models import ModelSpec, TrainPhase
from jirl.models.layers import (
    ACTIVATIONS,
    Conv2d,
    ConvTranspose2d,
    Dtype,
    PartialConv2d,
    instance_norm,
    resize_nearest,
    stat_dtype,
)
from jirl.tasks import HARMONIZATION

Array = jax.Array
INIT_STD = 0.02  # the official init_weights('normal', 0.02): N(0, 0.02) kernels, zero biases
lrelu = ACTIVATIONS["lrelu"]


def masked_mean_std(region: Array, mask: Array, eps: float) -> tuple[Array, Array]:
    """RAIN's statistics of one region (`get_foreground_mean_std`): mu = sum(x m) / (sum m + eps),
    sigma = sqrt(sum((x m + (1 - m) mu - mu)^2) / (sum m + eps) + eps), per sample and channel;
    `region` is already x * m."""
    num = jnp.sum(mask, axis=(1, 2), keepdims=True)
    mean = jnp.sum(region, axis=(1, 2), keepdims=True) / (num + eps)
    var = jnp.sum(jnp.square(region + (1 - mask) * mean - mean), axis=(1, 2),
                  keepdims=True) / (num + eps)
    return mean, jnp.sqrt(var + eps)


class RAIN(nn.Module):
    """Region-aware adaptive instance normalization (§3.2, Eq. 3; official `normalize.RAIN`).

    The background is instance-normalized over the background only; the foreground is normalized
    over the foreground and given the background's mean and deviation. Each region then gets its
    own (1 + gamma), beta (zero-initialized). The mask is nearest-resized to the features.
    """

    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        c = x.shape[-1]
        fg_gamma, fg_beta, bg_gamma, bg_beta = (
            self.param(name, nn.initializers.zeros, (c,))
            for name in ("foreground_gamma", "foreground_beta", "background_gamma",
                         "background_beta"))
        xs = x.astype(stat_dtype(x.dtype))
        m = resize_nearest(jax.lax.stop_gradient(mask), x.shape[1:3]).astype(xs.dtype)
        mean_b, std_b = masked_mean_std(xs * (1 - m), 1 - m, self.eps)
        background = ((xs - mean_b) / std_b * (1 + bg_gamma) + bg_beta) * (1 - m)
        mean_f, std_f = masked_mean_std(xs * m, m, self.eps)
        foreground = (((xs - mean_f) / std_f * std_b + mean_b) * (1 + fg_gamma) + fg_beta) * m
        return (foreground + background).astype(x.dtype)


class Norm(nn.Module):
    """The decoder's norm: RAIN (`norm="rain"`, official) or plain IN (`norm="in"`, the seed's
    baseline: the mask is not used)."""

    norm: str = "rain"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        if self.norm == "rain":
            return RAIN(dtype=self.dtype, name="rain")(x, mask)
        return instance_norm(x)


def down_conv(features: int, dtype: Dtype, name: str | None = None) -> Conv2d:
    """Conv 4x4, stride 2, padding 1, no bias: every encoder step of the generator."""
    return Conv2d(features, 4, 2, 1, use_bias=False, init_std=INIT_STD, dtype=dtype, name=name)


def up_conv(features: int, dtype: Dtype, name: str | None = None, bias: bool = False):
    """ConvTranspose 4x4, stride 2, padding 1: every decoder step of the generator."""
    return ConvTranspose2d(features, use_bias=bias, init_std=INIT_STD, dtype=dtype, name=name)


class CodecBlock(nn.Module):
    """One nested bottleneck block (official `UnetBlockCodec`, no attention): LReLU -> conv ->
    IN -> inner block -> ReLU -> convT -> norm -> dropout -> concat with the (in-place LReLU'd)
    input. The innermost
    (`depth == 1`) has no down norm, no dropout and no inner block."""

    features: int
    depth: int
    norm: str = "rain"
    dropout: float = 0.5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array, train: bool) -> Array:
        x = lrelu(x)  # the official LeakyReLU is in place: the skip below carries LReLU(x) too
        y = down_conv(self.features, self.dtype, "down")(x)
        if self.depth > 1:
            y = instance_norm(y)
            y = CodecBlock(self.features, self.depth - 1, self.norm, self.dropout, self.dtype,
                           name="submodule")(y, mask, train)
        y = up_conv(self.features, self.dtype, "up")(nn.relu(y))
        y = Norm(self.norm, self.dtype, name="upnorm")(y, mask)
        if self.depth > 1 and self.dropout:
            y = nn.Dropout(self.dropout, deterministic=not train)(y)
        return jnp.concatenate([x, y], axis=-1)


class AttentionGate(nn.Module):
    """The decoder's skip gate (official `model_layer1{1,2,3}att`): x * sigmoid(conv1x1(x))."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        gate = Conv2d(x.shape[-1], 1, init_std=INIT_STD, dtype=self.dtype, name="conv")(x)
        return nn.sigmoid(gate) * x


class Generator(nn.Module):
    """RainNet's generator (§3.1, Fig. 2; official `RainNet`): (comp, mask) -> output in [-1, 1].

    Encoder L0-L3 (conv, then LReLU -> conv -> IN) to ngf*8 channels at 1/16; `blocks` nested
    codec blocks; decoder L11-L13 (ReLU -> convT -> norm -> concat skip -> attention gate); out:
    ReLU -> convT (bias) -> tanh. Names follow the official modules (`model_layer0` -> layer0).
    Official quirk kept: its LeakyReLUs are `inplace=True`, so every skip connection of the
    encoder and of the codec blocks carries LReLU(x), not x.
    """

    ngf: int = 64
    blocks: int = 4
    norm: str = "rain"
    dropout: float = 0.5
    attention: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, comp: Array, mask: Array, train: bool) -> Array:
        if self.norm not in ("rain", "in"):
            raise ValueError(f"RainNet norm={self.norm!r}; use 'rain' (official) or 'in'")
        ngf, dt = self.ngf, self.dtype
        # The official LReLU before layers 1-3 is in place: the skips x0-x2 are LReLU'd as well.
        x0 = lrelu(down_conv(ngf, dt, "layer0")(comp.astype(dt)))
        x1 = lrelu(instance_norm(down_conv(ngf * 2, dt, "layer1")(x0)))
        x2 = lrelu(instance_norm(down_conv(ngf * 4, dt, "layer2")(x1)))
        x3 = instance_norm(down_conv(ngf * 8, dt, "layer3")(x2))
        y = CodecBlock(ngf * 8, self.blocks, self.norm, self.dropout, dt,
                       name="unet_block")(x3, mask, train)
        for layer, skip, features in ((11, x2, ngf * 4), (12, x1, ngf * 2), (13, x0, ngf)):
            y = up_conv(features, dt, f"layer{layer}")(nn.relu(y))
            y = Norm(self.norm, dt, name=f"layer{layer}norm")(y, mask)
            y = jnp.concatenate([skip, y], axis=-1)
            if self.attention:
                y = AttentionGate(dt, name=f"layer{layer}att")(y)
        return jnp.tanh(up_conv(3, dt, "out", bias=True)(nn.relu(y)))


class Discriminator(nn.Module):
    """RainNet's discriminator (official `NLayerDiscriminator` around `OrgDiscriminator`):
    (image, mask, train) -> (global score, verification score), each [B, h, w, 1].

    Global branch: `strided` spectral-norm partial convs (3x3, stride 2, padding 0, no mask) then
    one at stride 1; IN after all but the first; LReLU 0.2 after the strided ones; a 1x1 head.
    Verification branch: its own convs ("conv{i}f") on the foreground (mask M) and then on the
    background (1 - M); sim = x_f * x_b -> SN 1x1 -> LReLU -> SN 1x1 -> LReLU -> 1x1. In
    training mode every call of a spectral-norm conv runs one power iteration (torch's hooks run
    per call: the verification convs twice per forward).
    """

    ndf: int = 64
    strided: int = 6
    dtype: Dtype = jnp.float32

    def _convs(self, suffix: str) -> list[PartialConv2d]:
        n = self.strided
        return [PartialConv2d(self.ndf * min(2 ** min(i, 3), 8), 3, 0, stride=2 if i < n else 1,
                              init_std=INIT_STD, spectral_norm=True, dtype=self.dtype,
                              name=f"conv{i + 1}{suffix}") for i in range(n + 1)]

    @staticmethod
    def _branch(convs: list[PartialConv2d], x: Array, mask: Array | None, train: bool) -> Array:
        for i, conv in enumerate(convs):
            x, update = conv(x, mask, update_stats=train)
            mask = None if mask is None else update
            if i < len(convs) - 1:
                x = lrelu(instance_norm(x) if i > 0 else x)
        return x

    @nn.compact
    def __call__(self, image: Array, mask: Array, train: bool) -> tuple[Array, Array]:
        x = image.astype(self.dtype)
        g = self._branch(self._convs(""), x, None, train)
        verification = self._convs("f")
        xf = self._branch(verification, x, mask, train)
        xb = self._branch(verification, x, 1 - mask, train)
        c = g.shape[-1]
        score = Conv2d(1, 1, init_std=INIT_STD, dtype=self.dtype, name="convg3")(g)
        sim = xf * xb
        for name in ("convl1", "convl2"):
            sim = lrelu(Conv2d(c, 1, init_std=INIT_STD, spectral_norm=True, dtype=self.dtype,
                               name=name)(sim, update_stats=train))
        verify = Conv2d(1, 1, init_std=INIT_STD, dtype=self.dtype, name="convl3")(sim)
        return score, verify


class RainNet(nn.Module):
    """The generator G and, for training, the discriminator D (None: an inference-only model).

    __call__(image, train, mask) -> {"output": G's image, "harmonized": output * M + image * (1 - M)};
    `discriminate(image, mask, train)` -> D's (global, verification) scores. Initialization also
    runs D so that its parameters exist (they are training-only, as MadisNet's E_dom is).
    """

    g: Generator
    d: Discriminator | None = None

    def __call__(self, image: Array, train: bool = False, mask: Array | None = None) -> dict:
        if mask is None:
            if not self.is_initializing():
                raise ValueError("RainNet harmonizes the region given by `mask` ([B, H, W, 1] in "
                                 "{0, 1}); pass mask=...")
            mask = jnp.zeros((*image.shape[:3], 1), image.dtype)
        output = self.g(image, mask, train)
        m = mask.astype(output.dtype)
        harmonized = output * m + image.astype(output.dtype) * (1 - m)
        if self.is_initializing() and self.d is not None:
            self.d(harmonized, mask, train=False)
        return {"output": output, "harmonized": harmonized}

    def discriminate(self, image: Array, mask: Array, train: bool) -> tuple[Array, Array]:
        if self.d is None:
            raise ValueError("this RainNet has no discriminator (model.discriminator=False)")
        return self.d(image, mask, train)

    def penalized_score(self, image: Array, mask: Array, train: bool) -> Array:
        """D's gradient-penalty output (global + verification) / 2 (official `gp=True`)."""
        score, verify = self.discriminate(image, mask, train)
        return (score + verify) * 0.5


# ---------------------------------------------------------------- training (rainnet_model.py)


def harmonization_inputs(batch: dict) -> tuple[Array, Array, Array]:
    """(comp, mask, real) with the official dataset's re-composition comp * M + real * (1 - M):
    the composite's background is the real one exactly."""
    mask = batch["mask"].astype(batch["image"].dtype)
    comp = batch["image"] * mask + batch["real"] * (1 - mask)
    return comp, mask, batch["real"]


def gp_alpha(rng: Array, batch_size: int, dtype=jnp.float32) -> Array:
    """The gradient penalty's interpolation weights, one per sample ([B, 1, 1, 1], U(0, 1))."""
    return jax.random.uniform(rng, (batch_size, 1, 1, 1), dtype)


def _discriminate(apply_fn, params, batch_stats, image, mask, method="discriminate"):
    out, updates = apply_fn({"params": params, "batch_stats": batch_stats}, image, mask, True,
                            method=method, mutable=["batch_stats"])
    return out, updates["batch_stats"]


def generate(apply_fn, params, batch_stats, batch, rng) -> tuple[Array, dict]:
    """The step's G forward in training mode (official `forward()`): run once per step and shared
    by the D and the G phase (`ModelSpec.train_forward`); dropout from `rng`."""
    comp, mask, _ = harmonization_inputs(batch)
    out, updates = apply_fn({"params": params, "batch_stats": batch_stats}, comp, train=True,
                            mask=mask, rngs={"dropout": jax.random.fold_in(rng, 0)},
                            mutable=["batch_stats"])
    return out["harmonized"], updates["batch_stats"]


def gradient_penalty(apply_fn, params, batch_stats, real, fake, mask, alpha,
                     weight: float) -> tuple[Array, dict]:
    """weight * mean_b (||grad_x D_gp(x)||_2 - 1)^2 at x = alpha real + (1 - alpha) fake
    (official `cal_gradient_penalty`, type 'mixed', with its 1e-16 inside the norm)."""

    def score(x):
        out, stats = _discriminate(apply_fn, params, batch_stats, x, mask, "penalized_score")
        return jnp.sum(out.astype(jnp.promote_types(out.dtype, jnp.float32))), stats

    x_hat = alpha * real + (1 - alpha) * fake
    grads, batch_stats = jax.grad(score, has_aux=True)(x_hat)
    norms = jnp.linalg.norm(grads.reshape(grads.shape[0], -1) + 1e-16, axis=1)
    return weight * jnp.mean(jnp.square(norms - 1.0)), batch_stats


def discriminator_loss(apply_fn, params, batch_stats, batch, rng, loss_cfg, fake):
    """D's step (`backward_D`, wgangp) on G's output `fake` (a constant here):
    relu(1 + D(fake)) + relu(1 - D(real)) for the global and the verification head, + the
    gradient penalty. D runs in training mode on fake, real and the interpolation, in that order
    (each call one power iteration of its spectral norms)."""
    _, mask, real = harmonization_inputs(batch)
    (pf, vf), batch_stats = _discriminate(apply_fn, params, batch_stats, fake, mask)
    (pr, vr), batch_stats = _discriminate(apply_fn, params, batch_stats, real, mask)
    alpha = gp_alpha(jax.random.fold_in(rng, 1), real.shape[0], real.dtype)
    gp, batch_stats = gradient_penalty(apply_fn, params, batch_stats, real, fake, mask, alpha,
                                       loss_cfg.lambda_gp)
    terms = {name: jnp.mean(nn.relu(1 + sign * x)) for name, sign, x in
             (("global_fake", 1, pf), ("local_fake", 1, vf),
              ("global_real", -1, pr), ("local_real", -1, vr))}
    fake_term = terms["global_fake"] + terms["local_fake"]
    real_term = terms["global_real"] + terms["local_real"]
    total = fake_term + real_term + loss_cfg.gp_ratio * gp
    logs = {"D_fake": fake_term, "D_real": real_term, "D_gp": gp, "loss_D": total,
            "D_global": terms["global_fake"] + terms["global_real"],
            "D_local": terms["local_fake"] + terms["local_real"]}
    return total, (logs, batch_stats)


def generator_loss(apply_fn, params, batch_stats, batch, rng, loss_cfg, harmonized):
    """G's step (`backward_G`) on the step's G output `harmonized` (its gradient flows back
    through G's forward): -lambda_a mean D_global(harmonized) - lambda_v mean
    D_verify(harmonized) + lambda_L1 |harmonized - real|_1 (mean), D in training mode with the
    weights D's step left."""
    del rng
    _, mask, real = harmonization_inputs(batch)
    (pf, vf), batch_stats = _discriminate(apply_fn, params, batch_stats, harmonized, mask)
    g_global, g_local = -jnp.mean(pf), -jnp.mean(vf)
    gan = loss_cfg.lambda_a * g_global + loss_cfg.lambda_v * g_local
    l1 = jnp.mean(jnp.abs(harmonized - real)) * loss_cfg.lambda_l1
    total = gan + l1
    logs = {"G_global": g_global, "G_local": g_local, "G_GAN": gan, "G_L1": l1, "loss_G": total}
    return total, (logs, batch_stats)


# ---------------------------------------------------------------- registry


GENERATOR_KEYS = {"ngf": "ngf", "blocks": "blocks", "norm": "norm", "dropout": "dropout",
                  "attention": "attention"}
DISCRIMINATOR_KEYS = {"ndf": "ndf", "d_strided": "strided"}
MODEL_KEYS = ("name", "discriminator", *GENERATOR_KEYS, *DISCRIMINATOR_KEYS)


def build(cfg: ml_collections.ConfigDict, dtype: Dtype = jnp.float32) -> RainNet:
    """RainNet from `config.model`: the generator's keys (ngf, blocks, norm, dropout, attention),
    the discriminator's (ndf, d_strided) and `discriminator` (False: G only, for inference)."""
    unknown = sorted(set(cfg.keys()) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(f"config.model has keys that rainnet does not take: {unknown}; its keys "
                         f"are {sorted(MODEL_KEYS)}")
    g = Generator(**{f: cfg[k] for k, f in GENERATOR_KEYS.items() if k in cfg}, dtype=dtype)
    d = (Discriminator(**{f: cfg[k] for k, f in DISCRIMINATOR_KEYS.items() if k in cfg},
                       dtype=dtype) if cfg.get("discriminator", True) else None)
    return RainNet(g=g, d=d)


def eval_masks(outputs: dict) -> dict[str, Array]:
    """None: a harmonizer takes the mask as an input and predicts none."""
    del outputs
    return {}


def eval_images(outputs: dict) -> dict[str, Array]:
    """The harmonized image (normalized like the input), scored and saved by eval.py."""
    return {"harmonized": outputs["harmonized"]}


def model_inputs(batch: dict) -> dict:
    """The foreground mask: RainNet harmonizes the region it is given."""
    return {"mask": batch["mask"]}


PARAM_GROUPS = ("g", "d")


def param_labels(params: dict) -> dict:
    """Optimizer group of every parameter: its network, "g" or "d" (two torch Adams)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[0].key, params)


SPEC = ModelSpec(
    name="rainnet", build=build, objective=None, eval_masks=eval_masks,
    param_groups=PARAM_GROUPS, param_labels=param_labels, eval_images=eval_images,
    train_phases=(TrainPhase("d", discriminator_loss, ("d",)),
                  TrainPhase("g", generator_loss, ("g",), through_forward=True)),
    train_forward=generate,
    task=HARMONIZATION, model_inputs=model_inputs, primary_mask="harmonized",
    harmonization_inputs=harmonization_inputs)

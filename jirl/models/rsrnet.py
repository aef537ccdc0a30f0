"""RSRNet: Inharmonious Region Localization via Recurrent Self-Reasoning (Wu, Niu, Liang, Zhang, BMVC 2022,
arXiv 2210.02036).

A UNet whose bottleneck holds a Recurrent Self-Reasoning (RSR) module (§3.2): starting from an empty
mask, RSR alternates K times between "which pixels are background?" (the mean style feature f_bg of
the pixels the current mask calls background), "how similar is every pixel to it?" (a Multi-scale
Similarity Map, MSM) and a convolutional-GRU update of the mask, like a learned two-cluster k-means.
The last RSR mask guides the UNet decoder as attention (§3.3) and a learned gate blends the two
masks. No official code is public; this implementation follows the paper, and every choice the
paper leaves open is listed here with its reason.

Encoder and features
  * The encoder is the UNet baseline's (`resnet.Encoder(stem_bias=False)`: 3x3 stem without
    max-pool, ResNet34 layers 1-4, max-pool, a fifth stage); features f1..f5 lie at 1, 1/2, 1/4,
    1/8, 1/16 of the input. RSR runs on f4 (H/8, 512 channels at ResNet34 widths), as §3.2 says.
  * The style and content heads F_s, F_c are conv3x3 -> ReLU -> conv1x1, both `head_features`
    wide (256 in the paper). No BatchNorm in the heads or anywhere in RSR (see below).
  * Encoder stages 1-4 can start from torchvision ResNet34 (`model.backbone_weights`, the
    SPEC's `pretrained`), as for DIRL and the UNet baseline.

The RSR state and the mask (§3.2)
  * The state is (H, M) with M a *logit* map at H/8, updated residually, M^k = M^{k-1} + Delta M^k.
    Residual updates of a logit are unbounded and need no clipping, as RAFT's flow updates (Teed &
    Deng, ECCV 2020, §3.3); a probability map would have to be clipped into [0, 1] after every
    update. sigma(M) is used wherever the paper uses the mask: for the background threshold, as GRU
    input and for the loss.
  * M^0 is the paper's all-zero mask, as a logit -inf: sigma(M^0) = 0 exactly, so every pixel is
    background and f_bg^0 is the global mean of F_s by construction, and the GRU's first input
    holds a zero mask. -inf + Delta M is -inf, so the first update is the mask itself:
    M^1 = Delta M^1 (the same as adding Delta M^1 to a zero logit).
  * Background pixels are those with sigma(M) < 0.5, tested as M < 0 (the same set, without
    sigmoid rounding). The threshold is a hard mask, so no gradient flows through it; gradients
    reach F_s through the average. An image with no background pixel (sigma(M) >= 0.5 everywhere)
    gets the global mean of F_s as f_bg.
  * MSM (§3.2): S_l = cos(f_bg, box mean of F_s over (2l+1)^2 windows), l = 0..L-1 (L = 4), stride
    1, same-size output. The box mean divides by the number of valid pixels (avg_pool with
    count_include_pad=False): a window cut by the border averages only real features. Cosine
    similarity is invariant to a positive rescaling of a vector, so the choice only matters where
    the zero-padded sum would be so small that the eps clamp acts; it keeps the box features true
    local means. The eps is torch.nn.functional.cosine_similarity's, 1e-8 clamping each norm.
  * GRU input x = [ReLU(conv3x3(sigma(M))), ReLU(conv3x3(S)), F_c, sigma(M)], as §3.2 says ("M and
    S go through two 3x3 convolutions, respectively ... concatenated with F_c and M"). The width of
    the two embeddings, `embed_features` (64), is not in the paper; it is our choice, of the order
    of RAFT's motion-encoder outputs (RAFT embeds correlation with 1x1 + 3x3 convs and flow with
    7x7 + 3x3 convs, to 192 and 64 channels; RSRNet's paper uses one 3x3 conv for each input).
  * ConvGRU with 3x3 convs for z, r and h~ over [H, x] (RAFT's equations: z = sigma(conv[H, x]),
    r = sigma(conv[H, x]), h~ = tanh(conv[r*H, x]), H = (1 - z) H + z h~), `hidden_features`
    (128) wide. H^0 = tanh(conv3x3(F_c)), as RAFT starts its hidden state from tanh of the
    context features: the first update then already sees the image content, where H^0 = 0 would
    make the first step's gates depend on x alone. (With `content_from="style"`, of F_s.)
  * Delta M = conv1x1(ReLU(conv3x3(H))), 1 channel; the 3x3 conv is 2 * hidden_features wide
    (RAFT's FlowHead: 128 -> 256 -> out).
  * Every M^k is upsampled x8 by RAFT's convex upsampling (§3.3 of RAFT, `upsample_flow`): weights
    0.25 * conv1x1(ReLU(conv3x3(H))) with 8*8*9 channels (conv3x3 2 * hidden_features wide, as
    RAFT's mask head), a softmax over the 3x3 neighbours, a weighted sum of the logit map's 3x3
    neighbourhood. Unlike RAFT (`F.unfold`, zero padding) the neighbourhood is edge-padded, so
    that a constant logit map stays constant up to the border (zero padding would pull border
    pixels towards logit 0, probability 0.5). M-bar^k = sigma(upsampled logits).
    `upsample="bilinear"` replaces it by bilinear x8 (align_corners=True, RAFT's `upflow8`).
  * No BatchNorm inside the recurrence: its batch statistics would be updated K times per step
    inside `nn.scan` (mutable collections under scan), and one set of statistics would have to
    serve K differently distributed inputs; RAFT's update block has none either.
  * The K iterations are one `nn.scan` over the cell (parameters shared across steps, the
    paper's recurrence). `remat=True` saves only the carries (H, M) between steps and recomputes
    each step's internals in the backward pass. `unroll` is lax.scan's unroll factor: 1 (a rolled
    loop) suits GPUs and TPUs; XLA:CPU runs the backward pass of convolutions inside a loop body
    much slower than outside one (cf. jax-ml/jax#12868), so the config's default (0, auto)
    unrolls fully on CPU. Neither
    option changes the results (tested).

Decoder and combination (§3.3)
  * The decoder is the UNet baseline's (`unet.py`): bottleneck DoubleConv on f5, Up blocks u4..u0
    over f5..f1 (u4 keeps the 1/16 resolution), 1x1 conv to a logit. "We feed M_rsr into the
    decoder by concatenation" (§3.3): M_rsr = M-bar^K, averaged to each level's resolution (area
    downsampling, exact for the power-of-two factors; bilinear downsampling would alias), is one
    more channel of every skip connection f1..f5, i.e. of the bottleneck's input and of every Up
    block's concatenation. The paper does not say which levels; all of them, because the mask
    is meant to steer the decoder wherever it "integrates multi-scale encoder features through
    skip connection", and at f1 it is at full resolution. Gradients flow from the decoder into
    RSR through the guide. `guidance="residual_attention"` instead multiplies every decoder output
    by (1 + A), A = M_rsr at that level (DIRL's MDA form).
  * G = sigmoid(conv3x3([decoder's last features, M_dec logit, M_rsr logit])), 1 channel;
    M_fnl = G * M_dec + (1 - G) * M_rsr on probabilities. `combine="average"`: M_fnl =
    (M_dec + M_rsr) / 2.
  * Loss: L = l(M_fnl) + sum_k 0.8^(K-k) l(M-bar^k), l = bce + (1 - ssim) + iou. M_dec is
    supervised only through M_fnl, as the paper's equation says.
  * The "logits" output is the logit of M_fnl clipped to [1e-6, 1 - 1e-6] (M_fnl is a mixture
    of probabilities, not the sigmoid of one logit); the loss uses the probabilities.

Ablations of Table 2 (config.model; configs/rsrnet.py:row1..row9 names the rows):
  * row 2, `combine="none"`: no combination, M_dec is the output ("mask") and picks the best
    checkpoint; the loss is l(M_dec) + the RSR masks' terms.
  * row 3, `similarity_only=True` (with combine="none"): "a single similarity matrix with scale
    l = 0 as the updated inharmonious mask", iterated 12 times: M^k = (1 - S^{k-1,0}) / 2, with
    f_bg from M^{k-1} -- no GRU, no residual, no content head, bilinear x8 (no state for convex
    weights). Cosine similarity lies in [-1, 1]; (1 - S) / 2 maps it onto [0, 1] so that pixels
    unlike the background are inharmonious, and M^k < 0.5 (the next background) is S > 0.
  * row 4, `combine="average"`: M_fnl = (M_dec + M_rsr) / 2.
  * row 5, `use_gru=False`: H = tanh(conv3x3(ReLU(conv3x3(x)))), a state without recurrence (the
    tanh keeps the GRU's range for the heads).
  * row 6, `use_msm=False`: "only feed F_c and M^{k-1} into the GRU": no similarity map (and no
    F_s head, which nothing else reads); x = [ReLU(conv3x3(sigma(M))), F_c, sigma(M)].
    `scales=1` is a different variant, a single-scale MSM (S_0 only).
  * row 7, `content_from="style"`: F_s where F_c was (no content head).
  * row 8, `upsample="bilinear"`: bilinear x8 of the logits (align_corners=True, RAFT's `upflow8`).
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from jirl import losses
from jirl.models import ModelSpec, from_config
from jirl.models.layers import Conv2d, Dtype, resize_bilinear, stat_dtype
from jirl.models.resnet import RESNET34_BACKBONE, Encoder, check_image
from jirl.models.unet import DoubleConv, Up

Array = jax.Array

COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity's eps, on each norm
UPSAMPLE_WEIGHT_SCALE = 0.25  # RAFT scales the convex-upsampling logits by 0.25
CONTENT_SOURCES = ("content", "style")
UPSAMPLE_MODES = ("convex", "bilinear")
COMBINE_MODES = ("learned", "average", "none")
GUIDANCE_MODES = ("concat", "residual_attention")
LOGIT_CLIP = 1e-6  # logits of mixed or mapped probabilities: of p clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP]


# ---------------------------------------------------------------------------------------------
# Pure functions of the RSR step
# ---------------------------------------------------------------------------------------------


def background_feature(style: Array, logits: Array) -> Array:
    """f_bg (§3.2): mean of `style` [B,h,w,C] over the pixels with sigma(logits) < 0.5 -> [B, C].

    An image without background pixel gets the global mean of its style map.
    """
    chex.assert_rank([style, logits], 4)
    x = style.astype(stat_dtype(style.dtype))
    background = (logits < 0).astype(x.dtype)  # hard mask: no gradient through the threshold
    count = jnp.sum(background, axis=(1, 2))  # [B, 1]
    total = jnp.sum(x * background, axis=(1, 2))
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), jnp.mean(x, axis=(1, 2)))


def clipped_logit(p: Array) -> Array:
    """log(p / (1 - p)) of probabilities clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP]: finite everywhere."""
    p = jnp.clip(p, LOGIT_CLIP, 1 - LOGIT_CLIP)
    return jnp.log(p) - jnp.log1p(-p)


def _clamped_norm(x: Array, eps: float) -> Array:
    """max(|x|, eps) over the last axis, as sqrt(max(|x|^2, eps^2)): finite gradient at x = 0."""
    return jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def cosine_similarity(x: Array, y: Array, eps: float = COSINE_EPS) -> Array:
    """`F.cosine_similarity(x, y, dim=-1, eps)` keeping the channel axis: x.y / (max|x| max|y|)."""
    dot = jnp.sum(x * y, axis=-1, keepdims=True)
    return dot / (_clamped_norm(x, eps) * _clamped_norm(y, eps))


def box_mean(x: Array, radius: int) -> Array:
    """Mean over (2r+1)^2 windows, stride 1, same size; border windows average valid pixels only
    (`F.avg_pool2d(x, 2r+1, 1, r, count_include_pad=False)`)."""
    if radius == 0:
        return x
    k = 2 * radius + 1
    return nn.avg_pool(x, (k, k), strides=(1, 1), padding=((radius, radius), (radius, radius)),
                       count_include_pad=False)


def similarity_map(style: Array, f_bg: Array, scales: int) -> Array:
    """Multi-scale Similarity Map (§3.2): S_l = cos(f_bg, box mean of F_s, radius l) -> [B,h,w,L]."""
    x = style.astype(stat_dtype(style.dtype))
    bg = f_bg[:, None, None, :].astype(x.dtype)
    return jnp.concatenate([cosine_similarity(box_mean(x, r), bg) for r in range(scales)], axis=-1)


def convex_upsample(x: Array, weights: Array, factor: int) -> Array:
    """RAFT's convex upsampling (Teed & Deng 2020, §3.3): x [B,h,w,C] -> [B, f*h, f*w, C].

    Each output pixel is a softmax-weighted combination of the 3x3 neighbourhood of its source
    pixel; `weights` [B,h,w,9*f*f] is ordered (neighbour, row, column) like RAFT's
    `mask.view(N, 1, 9, 8, 8, H, W)`. The neighbourhood is edge-padded (RAFT: zero padding), so a
    constant map is returned unchanged everywhere.
    """
    b, h, w, c = x.shape
    chex.assert_shape(weights, (b, h, w, 9 * factor * factor))
    xf = x.astype(stat_dtype(x.dtype))
    padded = jnp.pad(xf, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    neighbours = jnp.stack(
        [padded[:, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)], axis=3)  # [B,h,w,9,C]
    wts = weights.astype(xf.dtype).reshape(b, h, w, 9, factor, factor)
    wts = jax.nn.softmax(wts, axis=3)
    up = jnp.einsum("bhwnij,bhwnc->bhiwjc", wts, neighbours)
    return up.reshape(b, h * factor, w * factor, c)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


class ConvHead(nn.Module):
    """conv3x3 -> ReLU -> conv1x1: the style/content heads (§3.2) and RAFT-style prediction heads."""

    mid_features: int
    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.relu(Conv2d(self.mid_features, 3, 1, 1, dtype=self.dtype, name="conv0")(x))
        return Conv2d(self.features, 1, 1, 0, dtype=self.dtype, name="conv1")(x)


class ConvGRU(nn.Module):
    """Convolutional GRU with 3x3 convs (§3.2; RAFT's `ConvGRU` equations)."""

    features: int
    dtype: Dtype = jnp.float32

    def _conv(self, name: str) -> Conv2d:
        return Conv2d(self.features, 3, 1, 1, dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, h: Array, x: Array) -> Array:
        hx = jnp.concatenate([h, x.astype(h.dtype)], axis=-1)
        z = jax.nn.sigmoid(self._conv("conv_z")(hx))
        r = jax.nn.sigmoid(self._conv("conv_r")(hx))
        q = jnp.tanh(self._conv("conv_q")(jnp.concatenate([r * h, x.astype(h.dtype)], axis=-1)))
        return ((1 - z) * h + z * q).astype(h.dtype)


class RSRCell(nn.Module):
    """One RSR iteration (§3.2): f_bg, MSM, GRU update of H, M += Delta M, x8 upsampling.

    __call__((H, M), F_s, F_c) -> ((H', M'), full-resolution logits of M'). F_c is None when
    `similarity_only`, F_s when nothing reads it (scales=0 with F_c as the content). M = -inf is
    the empty mask M^0.
    """

    hidden_features: int = 128
    embed_features: int = 64
    scales: int = 4
    factor: int = 8
    use_gru: bool = True
    similarity_only: bool = False
    upsample: str = "convex"
    dtype: Dtype = jnp.float32

    def _embed(self, x: Array, name: str) -> Array:
        return nn.relu(Conv2d(self.embed_features, 3, 1, 1, dtype=self.dtype, name=name)(x))

    @nn.compact
    def __call__(self, carry: tuple[Array, Array], style: Array, content: Array | None
                 ) -> tuple[tuple[Array, Array], Array]:
        h, m = carry
        if self.similarity_only:
            return self._similarity_step(h, m, style)
        p = jax.nn.sigmoid(m).astype(self.dtype)
        parts = [self._embed(p, "mask_embed")]
        if self.scales:
            sim = similarity_map(style, background_feature(style, m), self.scales)
            parts.append(self._embed(sim, "sim_embed"))
        x = jnp.concatenate([*parts, content.astype(self.dtype), p], axis=-1)
        if self.use_gru:
            h = ConvGRU(self.hidden_features, self.dtype, name="gru")(h, x)
        else:
            y = nn.relu(Conv2d(self.hidden_features, 3, 1, 1, dtype=self.dtype, name="state_conv0")(x))
            y = jnp.tanh(Conv2d(self.hidden_features, 3, 1, 1, dtype=self.dtype, name="state_conv1")(y))
            h = y.astype(h.dtype)
        delta = ConvHead(2 * self.hidden_features, 1, self.dtype, name="delta_head")(h).astype(m.dtype)
        m = jnp.where(jnp.isneginf(m), delta, m + delta)  # M^1 = Delta M^1: M^0 = -inf is replaced
        return (h, m), self._upsample(m, h)

    def _similarity_step(self, h: Array, m: Array, style: Array) -> tuple[tuple[Array, Array], Array]:
        """Table 2, row 3: M^k = (1 - S^{k-1,0}) / 2, the l = 0 similarity map itself (no GRU)."""
        sim = similarity_map(style, background_feature(style, m), 1)
        m = clipped_logit(0.5 * (1.0 - sim))
        return (h, m), self._upsample(m, h)

    def _upsample(self, m: Array, h: Array) -> Array:
        b, hh, ww, _ = m.shape
        if self.upsample == "bilinear" or self.similarity_only:
            return resize_bilinear(m, (hh * self.factor, ww * self.factor), align_corners=True)
        weights = ConvHead(2 * self.hidden_features, 9 * self.factor ** 2, self.dtype,
                           name="upsample_head")(h)
        return convex_upsample(m, UPSAMPLE_WEIGHT_SCALE * weights, self.factor)


class RSR(nn.Module):
    """Recurrent Self-Reasoning (§3.2): heads F_s, F_c on f4, then K scanned RSRCell steps from M^0 = 0.

    f4 [B,h,w,C] -> full-resolution logits of M^1..M^K, [K, B, factor*h, factor*w, 1].
    """

    iterations: int = 12
    head_features: int = 256
    hidden_features: int = 128
    embed_features: int = 64
    scales: int = 4
    factor: int = 8
    use_gru: bool = True
    content_from: str = "content"
    similarity_only: bool = False
    upsample: str = "convex"
    remat: bool = False
    unroll: int = 1
    dtype: Dtype = jnp.float32

    def cell_config(self) -> dict:
        """The RSRCell fields of this module (tests rebuild the cell from them)."""
        return dict(hidden_features=self.hidden_features, embed_features=self.embed_features,
                    scales=self.scales, factor=self.factor, use_gru=self.use_gru,
                    similarity_only=self.similarity_only, upsample=self.upsample, dtype=self.dtype)

    def setup(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"RSR needs at least one iteration; got iterations={self.iterations}")
        if self.scales < 0:
            raise ValueError(f"scales must be >= 0 (0: no similarity map); got scales={self.scales}")
        if self.unroll < 1:
            raise ValueError(f"unroll must be >= 1 (1 = a rolled loop); got {self.unroll}")
        if self.content_from not in CONTENT_SOURCES:
            raise ValueError(f"unknown content_from {self.content_from!r}; use one of {CONTENT_SOURCES}")
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"unknown upsample {self.upsample!r}; use one of {UPSAMPLE_MODES}")
        if self._uses_style():
            self.style_head = ConvHead(self.head_features, self.head_features, self.dtype)
        if not self.similarity_only and self.content_from == "content":
            self.content_head = ConvHead(self.head_features, self.head_features, self.dtype)
        if self.use_gru and not self.similarity_only:
            self.hidden_init = Conv2d(self.hidden_features, 3, 1, 1, dtype=self.dtype)
        cell = nn.remat(RSRCell, prevent_cse=False) if self.remat else RSRCell
        steps = nn.scan(cell, variable_broadcast="params", split_rngs={"params": False},
                        in_axes=(nn.broadcast, nn.broadcast), out_axes=0, length=self.iterations,
                        unroll=self.unroll)
        self.cell = steps(**self.cell_config())

    def _uses_style(self) -> bool:
        """F_s exists unless nothing reads it (no similarity map, and F_c as the content)."""
        return self.similarity_only or self.scales > 0 or self.content_from == "style"

    def initial_state(self, f4: Array) -> tuple[Array | None, Array | None, tuple[Array, Array]]:
        """(F_s or None, F_c or None, (H^0, M^0)): the heads on f4 and the state the iterations start
        from. M^0 is the all-zero mask (§3.2) as a logit: -inf."""
        b, h, w, _ = f4.shape
        style = self.style_head(f4) if self._uses_style() else None
        content = None
        if not self.similarity_only:
            content = self.content_head(f4) if self.content_from == "content" else style
        if self.use_gru and content is not None:
            hidden = jnp.tanh(self.hidden_init(content))
        else:
            hidden = jnp.zeros((b, h, w, self.hidden_features), self.dtype)
        return style, content, (hidden, jnp.full((b, h, w, 1), -jnp.inf, stat_dtype(self.dtype)))

    def __call__(self, f4: Array) -> Array:
        b, h, w, _ = f4.shape
        style, content, carry = self.initial_state(f4)
        _, up_logits = self.cell(carry, style, content)
        chex.assert_shape(up_logits, (self.iterations, b, h * self.factor, w * self.factor, 1))
        return up_logits


class GuidedDecoder(nn.Module):
    """The UNet decoder (`unet.py`) guided by M_rsr at every level (§3.3).

    skips f1..f5 and the guide M_rsr [B,H,W,1] (probabilities at f1's size) -> (the last decoder
    features, M_dec logits). `features[i]` is the width that Up `u{i}` outputs. `guidance`:
    "concat" (the paper) appends the guide, averaged to each skip's resolution, to every skip
    f1..f5 as one more channel; "residual_attention" multiplies every decoder output by (1 + A).
    """

    features: Sequence[int]
    guidance: str = "concat"
    dtype: Dtype = jnp.float32

    @staticmethod
    def at_level(guide: Array, x: Array) -> Array:
        """The guide averaged over the guide pixels that each pixel of x covers (area pooling)."""
        f = guide.shape[1] // x.shape[1]
        a = nn.avg_pool(guide, (f, f), strides=(f, f)) if f > 1 else guide
        chex.assert_equal_shape_prefix([a, x], 3)
        return a.astype(x.dtype)

    def attend(self, x: Array, guide: Array) -> Array:
        """x * (1 + A) with guidance="residual_attention" (DIRL's MDA form); x otherwise."""
        return x * (1 + self.at_level(guide, x)) if self.guidance == "residual_attention" else x

    @nn.compact
    def __call__(self, skips: Sequence[Array], guide: Array, train: bool) -> tuple[Array, Array]:
        if self.guidance not in GUIDANCE_MODES:
            raise ValueError(f"unknown guidance {self.guidance!r}; use one of {GUIDANCE_MODES}")
        n = len(skips)
        width = skips[-1].shape[-1]
        if self.guidance == "concat":
            skips = [jnp.concatenate([f, self.at_level(guide, f)], axis=-1) for f in skips]
        h = self.attend(DoubleConv(width, self.dtype, name="bottleneck")(skips[-1], train), guide)
        for i in range(n - 1, -1, -1):
            h = Up(self.features[i], upsample=i != n - 1, dtype=self.dtype, name=f"u{i}")(h, skips[i], train)
            h = self.attend(h, guide)
        return h, Conv2d(1, 1, 1, 0, use_bias=True, dtype=self.dtype, name="out_conv")(h)


class RSRNet(nn.Module):
    """RSRNet (Wu et al. 2022): image [B,H,W,3] -> inharmonious-region mask [B,H,W,1].

    Returns {"mask": M_fnl, "logits": logit of M_fnl (probabilities clipped to [1e-6, 1 - 1e-6]),
    "mask_dec": M_dec, "mask_rsr": M_rsr = M-bar^K, "rsr_masks": M-bar^1..M-bar^K [K,B,H,W,1]},
    all probabilities in float32 (>= the compute dtype). H and W must be multiples of 16.
    """

    stem_features: int = 64
    stage_features: Sequence[int] = (64, 128, 256, 512, 512)
    stage_blocks: Sequence[int] = (3, 4, 6, 3, 3)
    head_features: int = 256
    hidden_features: int = 128
    embed_features: int = 64
    iterations: int = 12
    scales: int = 4
    use_gru: bool = True
    use_msm: bool = True
    content_from: str = "content"
    similarity_only: bool = False
    upsample: str = "convex"
    combine: str = "learned"
    guidance: str = "concat"
    remat: bool = False
    unroll: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, image: Array, train: bool = False) -> dict:
        b, h, w = check_image(image, "RSRNet")
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"unknown combine {self.combine!r}; use one of {COMBINE_MODES}")
        skips = Encoder(self.stem_features, self.stage_features, self.stage_blocks, stem_bias=False,
                        dtype=self.dtype, name="encoder")(image, train)
        rsr_logits = RSR(
            iterations=self.iterations, head_features=self.head_features,
            hidden_features=self.hidden_features, embed_features=self.embed_features,
            scales=self.scales if self.use_msm else 0, factor=h // skips[3].shape[1],
            use_gru=self.use_gru, content_from=self.content_from, similarity_only=self.similarity_only,
            upsample=self.upsample, remat=self.remat, unroll=self.unroll, dtype=self.dtype,
            name="rsr")(skips[3])
        rsr_logit = rsr_logits[-1]
        mask_rsr = jax.nn.sigmoid(rsr_logit)
        widths = (self.stem_features, *self.stage_features[:4])
        feats, dec_logit = GuidedDecoder(widths, self.guidance, self.dtype, name="decoder")(
            skips, mask_rsr, train)
        dec_logit = dec_logit.astype(rsr_logit.dtype)
        mask_dec = jax.nn.sigmoid(dec_logit)
        if self.combine == "none":  # Table 2, rows 2 and 3: M_dec is the output
            mask, logits = mask_dec, dec_logit
        else:
            mask = self._combine(feats, dec_logit, rsr_logit)
            logits = clipped_logit(mask)
        chex.assert_shape([mask, mask_dec, mask_rsr], (b, h, w, 1))
        return {"mask": mask, "logits": logits, "mask_dec": mask_dec, "mask_rsr": mask_rsr,
                "rsr_masks": jax.nn.sigmoid(rsr_logits)}

    def _combine(self, feats: Array, dec_logit: Array, rsr_logit: Array) -> Array:
        """M_fnl (§3.3): G * M_dec + (1 - G) * M_rsr with the learned gate G, or the average."""
        mask_dec, mask_rsr = jax.nn.sigmoid(dec_logit), jax.nn.sigmoid(rsr_logit)
        if self.combine == "average":
            return 0.5 * (mask_dec + mask_rsr)
        logits = jnp.concatenate([dec_logit, rsr_logit], axis=-1).astype(feats.dtype)
        gate = Conv2d(1, 3, 1, 1, dtype=self.dtype, name="gate")(jnp.concatenate([feats, logits], axis=-1))
        gate = jax.nn.sigmoid(gate.astype(rsr_logit.dtype))
        return gate * mask_dec + (1 - gate) * mask_rsr


def build(cfg: ml_collections.ConfigDict, dtype: Dtype = jnp.float32) -> RSRNet:
    """RSRNet from `config.model` (see configs/rsrnet.py for the keys)."""
    return from_config(RSRNet, cfg, dtype, unroll=scan_unroll(cfg.unroll, cfg.iterations))


def scan_unroll(unroll: int, iterations: int) -> int:
    """`config.model.unroll`, with 0 = auto: fully unrolled on CPU, a rolled loop elsewhere."""
    if unroll == 0:
        return iterations if jax.default_backend() == "cpu" else 1
    return unroll


def step_weights(iterations: int, decay: float = 0.8) -> list[float]:
    """Loss weights of [M_fnl, M-bar^1..M-bar^K]: 1, then decay^(K-k) for k = 1..K."""
    return [1.0] + [decay ** (iterations - k) for k in range(1, iterations + 1)]


def objective(outputs: dict, batch: dict, loss_cfg: ml_collections.ConfigDict):
    """L = l(M_fnl) + sum_k decay^(K-k) l(M-bar^k), l = bce + (1 - ssim) + iou (`loss_cfg.mode`)."""
    steps = outputs["rsr_masks"]
    masks = [outputs["mask"], *(steps[k] for k in range(steps.shape[0]))]
    return losses.deep_supervision_objective(
        masks, step_weights(steps.shape[0], loss_cfg.decay), batch["mask"], loss_cfg.mode)


def eval_masks(outputs: dict) -> dict[str, Array]:
    """The masks that eval.py scores: the final mask first, then RSR's and the decoder's."""
    return {"M_fnl": outputs["mask"], "M_rsr": outputs["mask_rsr"], "M_dec": outputs["mask_dec"]}


def step_masks(outputs: dict) -> dict[str, Array]:
    """M-bar^1..M-bar^K as "M^1".."M^K": the mask after each RSR iteration (eval.per_iteration)."""
    steps = outputs["rsr_masks"]
    return {f"M^{k + 1}": steps[k] for k in range(steps.shape[0])}


# `pretrained`: encoder stages 1-4 take torchvision ResNet34 weights (`model.backbone_weights`).
SPEC = ModelSpec(name="rsrnet", build=build, objective=objective, eval_masks=eval_masks,
                 pretrained=RESNET34_BACKBONE, primary_mask="M_fnl", step_masks=step_masks)

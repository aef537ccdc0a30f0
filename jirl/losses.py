"""Mask losses for inharmonious region localization (DIRL, RSRNet).

Numerics follow the official DIRL training code (bcmi/DIRL-Inharmonious-Region-Localization):
``nn.BCELoss``, ``pytorch_ssim.SSIM(window_size=11)``, ``pytorch_iou.IOU`` and
``dirl_train.multi_bce_loss_fusion``. All tensors are NHWC float32 probabilities in [0, 1]; every
function is pure and jit-compatible.

Mask-loss modes (official ``--loss_mode``):

* ``"bce_ssim_iou"``: bce + (1 - ssim) + iou  (official default ``loss_mode=''``)
* ``"bce_ssim"``:     bce + (1 - ssim)        (official ``loss_mode`` other than ``''``)
* ``"bce"``:          bce                      (the DIRL paper's attention-map loss)

Part dictionaries hold the *loss terms* as the official code logs them: ``"ssim"`` is
``1 - SSIM``, ``"iou"`` is ``1 - IoU``; a mode only reports the terms it adds up.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

MASK_LOSS_MODES: tuple[str, ...] = ("bce_ssim_iou", "bce_ssim", "bce_iou", "bce")
DIRL_VARIANTS: tuple[str, ...] = ("official", "paper")
PAPER_LAMBDA_ATTENTION: float = 0.1

_LOG_CLAMP = -100.0  # torch BCELoss clamps log(p) and log(1 - p) at -100
_BCE_GRAD_EPS = 1e-12  # torch binary_cross_entropy_backward: max(p * (1 - p), 1e-12)
_SSIM_C1 = 0.01**2
_SSIM_C2 = 0.03**2


# ----------------------------------------------------------------------------------------------
# Binary cross-entropy
# ----------------------------------------------------------------------------------------------



def _at_least_f32(x) -> jax.Array:
    """Losses are computed in float32 at least (bf16 activations are upcast; float64 stays)."""
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))

def _clamped_log(x: jax.Array) -> jax.Array:
    """log(x) clamped at -100 without -inf/NaN in the forward pass (torch BCELoss)."""
    safe = jnp.where(x > 0, x, 1.0)
    return jnp.where(x > 0, jnp.maximum(jnp.log(safe), _LOG_CLAMP), _LOG_CLAMP)


@jax.custom_jvp
def _bce_elementwise(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Per-element torch ``binary_cross_entropy`` with logs clamped at -100."""
    return -(target * _clamped_log(pred) + (1.0 - target) * _clamped_log(1.0 - pred))


@_bce_elementwise.defjvp
def _bce_elementwise_jvp(primals, tangents):
    """torch's BCE derivative: (p - t) / max(p (1 - p), 1e-12) for p; log(1-p) - log(p) for t."""
    pred, target = primals
    dpred, dtarget = tangents
    out = _bce_elementwise(pred, target)
    d_dpred = (pred - target) / jnp.maximum(pred * (1.0 - pred), _BCE_GRAD_EPS)
    d_dtarget = _clamped_log(1.0 - pred) - _clamped_log(pred)
    return out, d_dpred * dpred + d_dtarget * dtarget


def bce(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Mean binary cross-entropy on probabilities, as torch ``nn.BCELoss()`` (log clamped at -100).

    Gradients follow torch's backward formula, so they stay finite for pred exactly 0 or 1.
    Inputs outside [0, 1] are not checked (torch raises; under jit we cannot) and give NaN.
    """
    chex.assert_equal_shape((pred, target))
    pred = _at_least_f32(pred)
    target = _at_least_f32(target)
    return jnp.mean(_bce_elementwise(pred, target))


# ----------------------------------------------------------------------------------------------
# SSIM
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def gaussian_window_1d(window_size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalized 1-D Gaussian of pytorch_ssim ``gaussian()`` (float32 like the torch window)."""
    centre = window_size // 2
    g = np.asarray(
        [math.exp(-((x - centre) ** 2) / float(2 * sigma**2)) for x in range(window_size)],
        dtype=np.float32,
    )
    # torch sums float32 in double precision: normalize by the correctly rounded sum, so that the
    # window is pytorch_ssim's bit for bit (SSIM amplifies window-sum errors ~100x, via C2)
    g = g / np.float32(g.astype(np.float64).sum())
    g.setflags(write=False)
    return g


@functools.lru_cache(maxsize=64)
def _blur_matrix(n: int, window_size: int, sigma: float) -> np.ndarray:
    """[n, n] banded matrix of the zero-padded 1-D Gaussian filter: row i holds the window at i."""
    g = gaussian_window_1d(window_size, sigma)
    pad = window_size // 2
    m = np.zeros((n, n + 2 * pad), np.float32)
    for i in range(n):
        m[i, i:i + window_size] = g
    return m[:, pad:n + pad]


def _gaussian_blur(x: jax.Array, window_size: int, sigma: float) -> jax.Array:
    """Separable zero-padded Gaussian filter of [N, H, W, 1] maps (pytorch_ssim window conv).

    Two banded-matrix products rather than 1-channel convolutions: the same sums, and on CPU the
    gradient of a 1-channel convolution is far slower than a matrix product's.
    """
    _, h, w, _ = x.shape
    mh = jnp.asarray(_blur_matrix(h, window_size, sigma), x.dtype)
    mw = jnp.asarray(_blur_matrix(w, window_size, sigma), x.dtype)
    x = jnp.einsum("ij,njwc->niwc", mh, x, precision=lax.Precision.HIGHEST)
    return jnp.einsum("kw,niwc->nikc", mw, x, precision=lax.Precision.HIGHEST)


def ssim(
    pred: jax.Array, target: jax.Array, window_size: int = 11, sigma: float = 1.5
) -> jax.Array:
    """Mean SSIM map of pytorch_ssim ``SSIM(window_size=11, size_average=True)`` (Wang et al. 2004).

    Gaussian window (sigma 1.5, outer product of the 1-D window) applied per channel with zero
    padding ``window_size // 2``; C1 = 0.01**2, C2 = 0.03**2; mean over batch, pixels, channels.
    """
    chex.assert_rank(pred, 4)
    chex.assert_equal_shape((pred, target))
    x = _at_least_f32(pred)
    y = _at_least_f32(target)
    b, h, w, c = x.shape
    # Filter the five statistics in one call: stack them, channels moved into the batch dim.
    stats = jnp.stack([x, y, x * x, y * y, x * y], axis=0)  # [5, B, H, W, C]
    stats = jnp.moveaxis(stats, -1, 2).reshape(5 * b * c, h, w, 1)
    blurred = _gaussian_blur(stats, window_size, sigma).reshape(5, b, c, h, w)
    mu1, mu2, e11, e22, e12 = blurred
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = e11 - mu1_sq
    sigma2_sq = e22 - mu2_sq
    sigma12 = e12 - mu1_mu2
    num = (2.0 * mu1_mu2 + _SSIM_C1) * (2.0 * sigma12 + _SSIM_C2)
    den = (mu1_sq + mu2_sq + _SSIM_C1) * (sigma1_sq + sigma2_sq + _SSIM_C2)
    return jnp.mean(num / den)


# ----------------------------------------------------------------------------------------------
# IoU loss
# ----------------------------------------------------------------------------------------------


def iou_loss(pred: jax.Array, target: jax.Array, eps: float = 0.0) -> jax.Array:
    """Soft IoU loss of pytorch_iou ``IOU``: batch mean of 1 - sum(tp) / (sum t + sum p - sum tp).

    Like the official code there is no epsilon by default (``eps=0``), so an image whose prediction
    and target are both exactly all-zero gives 0/0 = NaN (loss and gradient), exactly as in PyTorch.
    This cannot happen with a sigmoid prediction unless it underflows to 0 everywhere; pass
    ``eps > 0`` (added to the union) to opt out of the official behaviour.
    """
    chex.assert_equal_shape((pred, target))
    p = _at_least_f32(pred)
    t = _at_least_f32(target)
    axes = tuple(range(1, p.ndim))
    inter = jnp.sum(t * p, axis=axes)
    union = jnp.sum(t, axis=axes) + jnp.sum(p, axis=axes) - inter
    return jnp.mean(1.0 - inter / (union + eps))


# ----------------------------------------------------------------------------------------------
# Combined objectives
# ----------------------------------------------------------------------------------------------


def _check_mode(mode: str) -> None:
    """Raise a ValueError naming the valid mask-loss modes."""
    if mode not in MASK_LOSS_MODES:
        raise ValueError(
            f"Unknown mask loss mode {mode!r}; valid modes are {list(MASK_LOSS_MODES)}."
        )


def mask_loss(
    pred: jax.Array, target: jax.Array, mode: str = "bce_ssim_iou"
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-mask loss of dirl_train ``bce_ssim_loss``: bce [+ (1 - ssim)] [+ iou] by ``mode``.

    Returns ``(total, parts)`` with parts ``{"bce", "ssim" (= 1 - SSIM), "iou" (= 1 - IoU)}``
    restricted to the terms that ``mode`` sums ("bce_ssim" has no "iou", "bce_iou" no "ssim":
    MadisNet's loss_weights [1, lambda_ssim = 0, 1]; "bce" only "bce").
    """
    _check_mode(mode)
    parts = {"bce": bce(pred, target)}
    if "ssim" in mode:
        parts["ssim"] = 1.0 - ssim(pred, target)
    if mode.endswith("iou"):
        parts["iou"] = iou_loss(pred, target)
    total = _sum_parts(parts)
    return total, parts


def _sum_parts(parts: Mapping[str, jax.Array]) -> jax.Array:
    """Sum of the loss terms in insertion order (bce, ssim, iou: the official order)."""
    total = jnp.zeros((), jnp.float32)
    for v in parts.values():
        total = total + v
    return total


def deep_supervision_objective(
    masks: Sequence[jax.Array],
    weights: Sequence[float],
    target: jax.Array,
    mode: str = "bce_ssim_iou",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted multi-mask loss sum_k w_k l(M_k) (``multi_bce_loss_fusion``; RSRNet §3 loss).

    Returns ``(total, parts)``: ``total`` is weighted; ``parts`` holds ``"total"`` and the
    *unweighted* sums over masks of each term (as the official function logs them).
    RSRNet: ``masks = [M_fnl, M^1..M^K]``, ``weights = [1] + [0.8 ** (K - k) for k in 1..K]``.
    """
    _check_mode(mode)
    masks = list(masks)
    weights = list(weights)
    if len(masks) != len(weights):
        raise ValueError(
            f"deep_supervision_objective got {len(masks)} masks but {len(weights)} weights; "
            "pass one weight per mask."
        )
    total = jnp.zeros((), jnp.float32)
    sums: dict[str, jax.Array] = {}
    for m, w in zip(masks, weights, strict=True):
        loss, parts = mask_loss(m, target, mode)
        total = total + w * loss
        for k, v in parts.items():
            sums[k] = sums.get(k, jnp.zeros((), jnp.float32)) + v
    if not masks:  # keep the key set of ``mode`` even for an empty list
        sums = {k: jnp.zeros((), jnp.float32) for k in _mode_keys(mode)}
    return total, {"total": total, **sums}


def _mode_keys(mode: str) -> tuple[str, ...]:
    """Loss-term names that ``mode`` sums."""
    return {"bce_ssim_iou": ("bce", "ssim", "iou"), "bce_ssim": ("bce", "ssim"),
            "bce_iou": ("bce", "iou"), "bce": ("bce",)}[mode]


def dirl_objective(
    mask: jax.Array,
    attention_maps: Sequence[jax.Array],
    target: jax.Array,
    *,
    variant: str = "official",
    lambda_attention: float | None = None,
    lambda_detection: float = 1.0,
    mode: str = "bce_ssim_iou",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """DIRL training loss: lambda_det * L_det(mask) + lambda_att * L_att(MDA attention maps).

    ``variant="official"`` (dirl_train.py, ``loss_mode=''``): L_det = mask_loss(mask, mode) and
    L_att = sum over maps of mask_loss(map, mode); ``lambda_attention`` defaults to 1.
    ``variant="paper"`` (DIRL, ICME 2021): L_det = bce + (1 - ssim) on the mask, L_att = sum of
    the maps' BCE; ``lambda_attention`` defaults to the paper's 0.1 (``mode`` is ignored).

    Returns ``(total, logs)``; logs has ``total``, ``detection``, ``attention`` and the final mask's
    unweighted terms ``bce``, ``ssim`` (= 1 - SSIM) and ``iou`` (= 1 - IoU, only when summed).
    """
    if variant == "official":
        det_mode, att_mode = mode, mode
        lam_att = 1.0 if lambda_attention is None else lambda_attention
    elif variant == "paper":
        det_mode, att_mode = "bce_ssim", "bce"
        lam_att = PAPER_LAMBDA_ATTENTION if lambda_attention is None else lambda_attention
    else:
        raise ValueError(
            f"Unknown DIRL objective variant {variant!r}; valid variants are {list(DIRL_VARIANTS)}."
        )
    detection, det_parts = deep_supervision_objective([mask], [1.0], target, det_mode)
    attention, _ = deep_supervision_objective(
        attention_maps, [1.0] * len(attention_maps), target, att_mode
    )
    total = lambda_detection * detection + lam_att * attention
    logs = {"total": total, "detection": detection, "attention": attention}
    logs.update({k: v for k, v in det_parts.items() if k != "total"})
    return total, logs


# ----------------------------------------------------------------------------------------------
# MadisNet's domain-discrepancy losses (Liang et al., AAAI 2022, §3.3, Eqs. 3-4)
# ----------------------------------------------------------------------------------------------


def _safe_norm(x: jax.Array) -> jax.Array:
    """L2 norm over the last axis with a zero (not NaN) gradient at 0, as torch.norm's backward."""
    sq = jnp.sum(jnp.square(x), axis=-1)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def domain_discrepancy_losses(
    z_f: jax.Array, z_b: jax.Array, z_f_mapped: jax.Array, z_b_mapped: jax.Array,
    margin: float = 1e-3, eps: float = 1e-6,
) -> tuple[jax.Array, jax.Array]:
    """(L_ddm, L_di) of MadisNet's `train.py` from domain codes [B, D].

    With Δ = z_f − z_b (the composite's foreground/background codes) and Δ' the same on the
    mapped image I': L_ddm = mean(relu(‖Δ‖² − ‖Δ'‖² + margin)) (squared distances, as the code;
    the paper writes a hinge on distances) magnifies the discrepancy, and L_di = mean(1 −
    cos(Δ, Δ')), the cosine with eps added to the product of norms, keeps its direction.
    """
    dtype = jnp.promote_types(z_f.dtype, jnp.float32)  # float32, or float64 under jax_enable_x64
    delta = (z_f - z_b).astype(dtype)
    mapped = (z_f_mapped - z_b_mapped).astype(dtype)
    distance = jnp.sum(jnp.square(delta), axis=-1)
    magnified = jnp.sum(jnp.square(mapped), axis=-1)
    ddm = jnp.mean(jax.nn.relu(distance - magnified + margin))
    cos = jnp.sum(delta * mapped, axis=-1) / (_safe_norm(delta) * _safe_norm(mapped) + eps)
    return ddm, jnp.mean(1.0 - cos)

"""Per-example transforms of the input pipeline, as in the official DIRL data loader.

Official DIRL (``data/base_dataset.py``, ``data/ihd_dataset.py``): training applies
albumentations ``RandomResizedCrop(crop, crop, scale=(0.9, 1.0))`` (default ratio (3/4, 4/3))
then ``HorizontalFlip(p=0.5)`` to composite, real and mask, with the mask resized like an image
(bilinear, not nearest) and binarised with ``> 0.5``; a crop is re-drawn while it keeps <= 10
foreground pixels, except that each draw is accepted outright with probability 0.05
(``check_augmented_sample``; here the re-draws are capped). Evaluation resizes to crop x crop.
Resizing is OpenCV ``INTER_LINEAR`` (half-pixel centres, no antialiasing, edge clamping) on
uint8 images; ``resize_u8`` reproduces it bit for bit in numpy (``resize_bilinear``: the same
in floating point, for masks and maps).

``preprocess="resize"`` is RainNet's instead (``--preprocess none`` in its train.sh, and its
``Iharmony4Dataset`` for training and testing alike): the whole image resized to crop x crop by
torchvision's ``tf.resize`` on PIL images (PIL bilinear, antialiased when shrinking), the mask
converted to PIL mode "1" and resized (PIL resizes mode "1" nearest); no crop, no flip.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from jirl.normalization import IMAGENET_MEAN, IMAGENET_STD


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    crop_size: int = 224
    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_prob: float = 0.5
    min_foreground_pixels: int = 10  # a crop must keep MORE than this many foreground pixels ...
    keep_any_prob: float = 0.05  # ... unless this coin accepts it anyway
    max_redraws: int = 20  # after this many re-draws the last crop is used
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    preprocess: str = "crop"  # "crop" (DIRL's crop + flip) | "resize" (RainNet's; module doc)

    def __post_init__(self):
        if self.preprocess not in PREPROCESS:
            raise ValueError(f"data.preprocess={self.preprocess!r}; use one of {PREPROCESS}")

    @classmethod
    def from_data_config(cls, data_cfg) -> AugmentConfig:
        """The settings of `config.data` (crop_size, mean, std, preprocess); defaults elsewhere.
        A config saved before `preprocess` existed (an older checkpoint's) means "crop"."""
        return cls(crop_size=int(data_cfg["crop_size"]),
                   mean=tuple(float(v) for v in data_cfg["mean"]),
                   std=tuple(float(v) for v in data_cfg["std"]),
                   preprocess=str(data_cfg.get("preprocess", "crop")))


PREPROCESS = ("crop", "resize")


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of cv2.INTER_LINEAR along one axis."""
    x = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    x = np.clip(x, 0.0, src - 1)
    i0 = np.floor(x).astype(np.intp)
    i1 = np.minimum(i0 + 1, src - 1)
    return i0, i1, (x - i0).astype(np.float32)


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a [H, W, C] array to float32 [height, width, C] like cv2.INTER_LINEAR."""
    image = np.asarray(image)
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image.astype(np.float32)
    y0, y1, wy = _linear_taps(h, height)
    x0, x1, wx = _linear_taps(w, width)
    # In-place updates: fresh large temporaries cost page faults that dominate the run time.
    rows = image[y0].astype(np.float32)
    tmp = image[y1].astype(np.float32)
    tmp -= rows
    tmp *= wy[:, None, None]
    rows += tmp
    out = rows[:, x0]
    tmp = rows[:, x1]
    tmp -= out
    tmp *= wx[None, :, None]
    out += tmp
    return out


def _fixed_point_taps(src: int, dst: int, clamp: bool) -> tuple[np.ndarray, ...]:
    """OpenCV's INTER_LINEAR taps for 8-bit images along one axis: source indices and weights
    rounded to 11 bits (they sum to 2048), computed in float32 as OpenCV does. `clamp`: the
    horizontal axis's rule (a tap left of the first pixel gets weight 0); vertically OpenCV keeps
    the fraction and clamps only the row indices."""
    f = ((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    i = np.floor(f).astype(np.int64)
    f = (f - i.astype(np.float32)).astype(np.float32)
    if clamp:
        f = np.where((i < 0) | (i >= src - 1), np.float32(0), f)
        i = np.clip(i, 0, src - 1)
    w0 = np.rint((np.float32(1) - f) * np.float32(2048)).astype(np.int32)
    return np.clip(i, 0, src - 1), np.clip(i + 1, 0, src - 1), w0, 2048 - w0


def resize_u8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a uint8 [H, W, C] image to uint8 [height, width, C], bit-exact with
    ``cv2.resize(image, (width, height))`` (INTER_LINEAR's fixed-point path: 11-bit weights, the
    vertical pass's SIMD rounding), which the official DIRL / MadisNet / libcom code resizes with."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"resize_u8 takes uint8 images, got {image.dtype}")
    if image.shape[:2] == (height, width):
        return image.copy()
    y0, y1, b0, b1 = _fixed_point_taps(image.shape[0], height, clamp=False)
    x0, x1, a0, a1 = _fixed_point_taps(image.shape[1], width, clamp=True)
    rows = image.astype(np.int32)
    rows = rows[:, x0] * a0[None, :, None] + rows[:, x1] * a1[None, :, None]
    rows >>= 4
    out = (b0[:, None, None] * rows[y0]) >> 16
    out += (b1[:, None, None] * rows[y1]) >> 16
    out += 2
    out >>= 2
    return np.clip(out, 0, 255).astype(np.uint8)


def resize_pixels(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """An image resized as the official code's cv2.resize does: uint8 bit-exactly (`resize_u8`),
    other dtypes bilinearly and rounded to 8-bit levels; float32 [height, width, C]."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return resize_u8(image, height, width).astype(np.float32)
    return np.rint(resize_bilinear(image, height, width))


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
    """(y0, x0, crop_height, crop_width) drawn like albumentations/torchvision RandomResizedCrop."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # Fallback: central crop with the ratio clamped into range.
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _normalize_(pixels: np.ndarray, cfg: AugmentConfig) -> np.ndarray:
    """In place: (x / 255 - mean) / std on [..., 3k] float32 pixels, in torchvision's order of
    float32 operations (ToTensor's division, then Normalize's subtraction and division), so that
    the model sees the official code's input bit for bit."""
    reps = pixels.shape[-1] // 3
    pixels /= np.float32(255)
    pixels -= np.tile(np.asarray(cfg.mean, np.float32), reps)
    pixels /= np.tile(np.asarray(cfg.std, np.float32), reps)
    return pixels


def _arrays(record: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    composite = np.asarray(record["composite"])
    real = np.asarray(record["real"])
    mask = np.asarray(record["mask"])
    if mask.ndim == 2:
        mask = mask[..., None]
    if not composite.shape[:2] == real.shape[:2] == mask.shape[:2]:
        raise ValueError(
            f"example {_text(record.get('name'))!r}: composite {composite.shape}, real "
            f"{real.shape} and mask {mask.shape} must have the same height and width"
        )
    return composite, real, mask


def _text(value) -> str:
    if value is None:
        return ""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _output(images: np.ndarray, mask: np.ndarray, record: dict, cfg: AugmentConfig) -> dict:
    images = _normalize_(np.rint(images, out=images), cfg)  # rint: cv2 resizes uint8 to uint8.
    return {
        "image": images[..., :3],
        "mask": mask.astype(np.float32),
        "real": images[..., 3:],
        "subset": _text(record.get("subset")),
        "name": _text(record.get("name")),
    }


def _pil_resize(pixels: np.ndarray, size: int | tuple[int, int], mode: str | None = None
                ) -> np.ndarray:
    """A uint8 [H, W, C] image (C = 1: a mask) through PIL: optionally converted to `mode`, then
    resized to `size` (side, or (height, width)) with PIL's bilinear filter (mode "1": PIL's
    nearest); [height, width, C]."""
    height, width = (size, size) if isinstance(size, int) else size
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    if mode is not None:
        image = image.convert(mode)
    out = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    return out.reshape(height, width, -1)


def model_pixels(image: np.ndarray, height: int, width: int, cfg: AugmentConfig) -> np.ndarray:
    """A uint8 [H, W, 3] photo as the model sees it at `height` x `width`: resized as evaluation
    resizes it (`cfg.preprocess`: "crop" OpenCV-style bilinear rounded to uint8 levels, "resize"
    PIL's antialiased bilinear) and normalized; float32 [height, width, 3]. Inference's input."""
    image = np.asarray(image, np.uint8)
    if cfg.preprocess == "resize":
        pixels = _pil_resize(image, (height, width)).astype(np.float32)
    else:
        pixels = resize_pixels(image, height, width)
    return _normalize_(np.array(pixels, np.float32), cfg)


def model_mask(mask: np.ndarray, height: int, width: int, cfg: AugmentConfig) -> np.ndarray:
    """A bool [H, W] mask resized for a model's mask input as evaluation resizes masks
    (`resize_mask` with `cfg.preprocess`); float32 [height, width, 1]."""
    mask_u8 = np.where(np.asarray(mask, bool), np.uint8(255), np.uint8(0))
    return resize_mask(mask_u8, height, width, cfg.preprocess).astype(np.float32)


def resize_transform(record: dict, cfg: AugmentConfig) -> dict:
    """RainNet's preprocessing, for training and evaluation alike (see module doc)."""
    composite, real, mask_u8 = _arrays(record)
    size = cfg.crop_size
    images = np.concatenate([_pil_resize(composite, size), _pil_resize(real, size)], -1)
    mask = resize_mask(mask_u8, size, size, "resize")
    return _output(images.astype(np.float32), mask, record, cfg)


def train_transform(record: dict, rng: np.random.Generator, cfg: AugmentConfig) -> dict:
    """RandomResizedCrop + HorizontalFlip with the foreground re-draw rule (see module doc), or
    with `cfg.preprocess == "resize"` RainNet's `resize_transform`."""
    if cfg.preprocess == "resize":
        return resize_transform(record, cfg)
    composite, real, mask_u8 = _arrays(record)
    mask = mask_u8.astype(np.float32) / 255.0
    height, width = mask.shape[:2]
    size = cfg.crop_size
    for _ in range(cfg.max_redraws + 1):
        y0, x0, h, w = random_resized_crop_box(rng, height, width, cfg.scale, cfg.ratio)
        flip = rng.random() < cfg.hflip_prob
        keep_any = rng.random() < cfg.keep_any_prob
        crop_mask = resize_bilinear(mask[y0 : y0 + h, x0 : x0 + w], size, size) > 0.5
        if keep_any or int(crop_mask.sum()) > cfg.min_foreground_pixels:
            break
    box = (slice(y0, y0 + h), slice(x0, x0 + w))
    crop_images = resize_pixels(np.concatenate([composite[box], real[box]], -1), size, size)
    if flip:
        crop_images, crop_mask = crop_images[:, ::-1], crop_mask[:, ::-1]
    return _output(crop_images, crop_mask, record, cfg)


def resize_mask(mask_u8: np.ndarray, height: int, width: int, preprocess: str = "crop"
                ) -> np.ndarray:
    """Evaluation's resize of a uint8 mask [H, W(, 1)] to bool [height, width, 1]: "crop" (the
    official DIRL) bilinear, > 0.5; "resize" (RainNet) PIL mode "1", i.e. nearest."""
    mask = np.asarray(mask_u8, np.uint8)
    if mask.ndim == 2:
        mask = mask[..., None]
    if preprocess == "resize":
        return _pil_resize(mask, (height, width), mode="1") > 0
    return resize_bilinear(mask.astype(np.float32) / 255.0, height, width) > 0.5


def eval_transform(record: dict, cfg: AugmentConfig) -> dict:
    """Resize to crop x crop (bilinear; mask thresholded at 0.5), no randomness; with
    `cfg.preprocess == "resize"` RainNet's `resize_transform`."""
    if cfg.preprocess == "resize":
        return resize_transform(record, cfg)
    composite, real, mask_u8 = _arrays(record)
    size = cfg.crop_size
    crop_images = resize_pixels(np.concatenate([composite, real], -1), size, size)
    return _output(crop_images, resize_mask(mask_u8, size, size), record, cfg)


def padding_example(cfg: AugmentConfig) -> dict:
    size = cfg.crop_size
    return {
        "image": np.zeros((size, size, 3), np.float32),
        "mask": np.zeros((size, size, 1), np.float32),
        "real": np.zeros((size, size, 3), np.float32),
        "subset": "",
        "name": "",
    }

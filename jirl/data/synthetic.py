"""Synthetic iHarmony-style composites made from photos that installed packages ship.

Each example is built the way iHarmony4 built its composites (Cong et al., "DoveNet", CVPR
2020, §3): take a real photo, pick an object-like foreground region, change the foreground's
appearance (colour transfer from another photo, exposure, gamma, white balance, saturation, hue)
and paste it back, so the untouched photo is the harmonious ``real`` image and the binary mask
marks the inharmonious region. Regions are placed anywhere (centres uniform over the image,
clipped by the border) with shapes unrelated to the photo, so that the change of appearance is the
only cue: the mean training mask is nearly flat (see ``sample_mask``).

Source photos (bundled inside the wheels, loaded with no network access): scikit-image
``skimage.data`` astronaut, coffee, chelsea, rocket, immunohistochemistry and the left view of
stereo_motorcycle; scikit-learn ``load_sample_image`` china.jpg and flower.jpg. Excluded: photos
that need a pooch download (eagle, lily, ...), grey-scale images, drawings (colorwheel, logo),
and colour photos that are mostly black (hubble_deep_field, retina), where changes are invisible.

Train/test disjointness: every photo is cut once and for all (independently of the seed) into a
square *test region* at one of its corners (side ``TEST_REGION_FRACTION`` x the photo's shorter
side; the corner rotates with the photo's position in ``PHOTOS``) and a *train region*, the rest
of the photo. Test crops lie inside the test square; train crops never intersect it.
Colour-transfer reference statistics come from the same split's region of another photo. So no
source pixel is shared between the splits.

Determinism: example ``index`` of ``split`` is a pure function of ``(seed, split, index,
image_size)``; its ``numpy.random.Generator`` is seeded with ``[seed, split_id, index]``.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw
from skimage import color

SPLITS = ("train", "test")
SUBSET = "synthetic"

TEST_REGION_FRACTION = 0.45
"""Side of each photo's reserved test square, as a fraction of the photo's shorter side."""

CROP_FRACTION = (0.7, 1.0)
"""Range of a crop's side (train and test), as a fraction of the photo's test square's side."""

MIN_FG_FRACTION = 0.05
MAX_FG_FRACTION = 0.50

# Minimum mean absolute change (0..255 scale) over the foreground for a change to count as visible.
# 30 rather than a barely visible 8: a region placed anywhere is found only by its appearance, and
# a change too faint to see teaches a model little (single runs of the quick DIRL learned more with
# each step up from 8 to 20 to 30).
MIN_VISIBLE_CHANGE = 30.0


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        image = getattr(skimage.data, name)()
        return image[0] if isinstance(image, tuple) else image

    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(filename)

    return load


# name -> loader returning an RGB uint8 array. Order matters: it fixes each photo's test corner.
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "coffee": _skimage("coffee"),
    "chelsea": _skimage("chelsea"),
    "rocket": _skimage("rocket"),
    "motorcycle": _skimage("stereo_motorcycle"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
}


@functools.cache
def load_photo(name: str) -> np.ndarray:
    """Returns the named source photo as a read-only uint8 [H, W, 3] array."""
    image = np.ascontiguousarray(np.asarray(PHOTOS[name]())[..., :3], dtype=np.uint8)
    image.setflags(write=False)
    return image


# ----------------------------------------------------------------------------------------------
# Train/test regions and crop boxes.


@dataclasses.dataclass(frozen=True)
class Box:
    """A square crop ``[y0, y0 + size) x [x0, x0 + size)`` of a photo."""

    y0: int
    x0: int
    size: int

    def intersects(self, other: Box) -> bool:
        return (
            self.y0 < other.y0 + other.size
            and other.y0 < self.y0 + self.size
            and self.x0 < other.x0 + other.size
            and other.x0 < self.x0 + self.size
        )

    def inside(self, other: Box) -> bool:
        return (
            other.y0 <= self.y0
            and other.x0 <= self.x0
            and self.y0 + self.size <= other.y0 + other.size
            and self.x0 + self.size <= other.x0 + other.size
        )


def photo_shape(name: str) -> tuple[int, int]:
    return load_photo(name).shape[:2]


def test_region(name: str) -> Box:
    """The square of photo ``name`` reserved for the test split (fixed, seed-independent)."""
    h, w = photo_shape(name)
    side = int(round(TEST_REGION_FRACTION * min(h, w)))
    corner = list(PHOTOS).index(name) % 4  # 0 top-left, 1 top-right, 2 bottom-right, 3 bottom-left
    y0 = 0 if corner in (0, 1) else h - side
    x0 = 0 if corner in (0, 3) else w - side
    return Box(y0, x0, side)


def crop_side(rng: np.random.Generator, name: str) -> int:
    """Side of a crop of photo ``name``: ``CROP_FRACTION`` of its test square's side, both splits.

    Train and test crops are drawn at the same scales, so that a test composite shows its content
    as zoomed in as the training composites do theirs.
    """
    side = test_region(name).size
    lo, hi = CROP_FRACTION
    return int(rng.integers(int(lo * side), int(hi * side) + 1))


def sample_box(rng: np.random.Generator, name: str, split: str) -> Box:
    """Draws a square crop box of photo ``name`` that lies in ``split``'s region."""
    region = test_region(name)
    if split == "test":
        size = crop_side(rng, name)
        y0 = region.y0 + int(rng.integers(0, region.size - size + 1))
        x0 = region.x0 + int(rng.integers(0, region.size - size + 1))
        return Box(y0, x0, size)
    if split != "train":
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    h, w = photo_shape(name)
    size = crop_side(rng, name)
    while True:  # rejection sampling; terminates since a box of side <= the test square's fits
        for _ in range(50):
            box = Box(int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1)), size)
            if not box.intersects(region):
                return box
        size = max(1, int(size * 0.9))


def crop_resize(image: np.ndarray, box: Box, size: int) -> np.ndarray:
    patch = image[box.y0 : box.y0 + box.size, box.x0 : box.x0 + box.size]
    if patch.shape[0] == size:
        return np.array(patch)
    return np.asarray(Image.fromarray(patch).resize((size, size), Image.Resampling.BICUBIC))


# ----------------------------------------------------------------------------------------------
# Inharmonious regions: anywhere in the frame, any object-like shape.
#
# A region is drawn on the image plane with its centre uniform over the whole image, so it may
# run past the border and be clipped there, as objects in photos are cut by the frame. Its area
# is drawn log-uniformly in [MIN_FG_FRACTION, MAX_FG_FRACTION], and what remains visible after
# clipping must lie in that range too (else it is redrawn). With
# centres uniform and shapes unrelated to the photo's content, neither where a region is nor
# what it outlines says that it is inharmonious: only its changed appearance does.


def _plane(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) in units of the image side, in (0, 1)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    return (yy + 0.5) / size, (xx + 0.5) / size


def _ellipse(rng: np.random.Generator, size: int, area: float, centre: np.ndarray) -> np.ndarray:
    """A rotated ellipse of the given area (fraction of the image, before clipping)."""
    ratio = rng.uniform(0.35, 1.0)
    a = np.sqrt(area / (np.pi * ratio))
    b = ratio * a
    theta = rng.uniform(0.0, np.pi)
    yy, xx = _plane(size)
    dy, dx = yy - centre[0], xx - centre[1]
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _blob(rng: np.random.Generator, size: int, area: float, centre: np.ndarray) -> np.ndarray:
    """A smooth star-shaped blob: radius R (1 + sum_k a_k cos(k theta + phi_k)), k = 1..4."""
    k = np.arange(1, 5)
    amp = rng.uniform(0.0, 0.3, 4) / k
    phase = rng.uniform(0.0, 2 * np.pi, 4)
    radius = np.sqrt(area / (np.pi * (1.0 + 0.5 * np.sum(amp**2))))  # exact mean area
    yy, xx = _plane(size)
    dy, dx = yy - centre[0], xx - centre[1]
    theta = np.arctan2(dy, dx)[..., None]
    edge = radius * (1.0 + np.sum(amp * np.cos(k * theta + phase), axis=-1))
    return np.hypot(dy, dx) <= edge


def _polygon(rng: np.random.Generator, size: int, area: float, centre: np.ndarray) -> np.ndarray:
    """A random star-shaped polygon (5-12 vertices) of the given area."""
    n = int(rng.integers(5, 13))
    angles = np.sort(rng.uniform(0.0, 2 * np.pi, n))
    radii = rng.uniform(0.55, 1.0, n)
    xs, ys = radii * np.cos(angles), radii * np.sin(angles)
    unit_area = 0.5 * abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1)))
    scale = np.sqrt(area / max(unit_area, 1e-3)) * size
    cy, cx = centre * size
    points = [(float(cx + scale * x), float(cy + scale * y)) for x, y in zip(xs, ys, strict=True)]
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=255)
    return np.asarray(canvas) > 127


_SOLIDS = (_ellipse, _blob, _polygon)


def _solid(rng: np.random.Generator, size: int, area: float) -> np.ndarray:
    """One ellipse, blob or polygon, centred uniformly anywhere in the image."""
    shape = _SOLIDS[int(rng.integers(len(_SOLIDS)))]
    return shape(rng, size, area, rng.uniform(0.0, 1.0, 2))


def _parts(rng: np.random.Generator, size: int, area: float) -> np.ndarray:
    """Two to four separate solids sharing the area (a group of objects)."""
    count = int(rng.integers(2, 5))
    shares = rng.dirichlet(np.full(count, 2.0)) * area
    mask = np.zeros((size, size), bool)
    for share in shares:
        mask |= _solid(rng, size, float(share))
    return mask


def _thin(rng: np.random.Generator, size: int, area: float) -> np.ndarray:
    """One to three wandering strokes (poles, limbs, wires) of total area ~ ``area``."""
    count = int(rng.integers(1, 4))
    length = rng.uniform(0.5, 1.3)  # per stroke, in image sides
    width = float(np.clip(area / (count * length), 0.02, 0.08))
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(count):
        turns = int(rng.integers(1, 4))
        point = rng.uniform(0.0, 1.0, 2)
        heading = rng.uniform(0.0, 2 * np.pi)
        points = [point]
        for _ in range(turns):
            heading += rng.normal(0.0, 0.6)
            point = point + (length / turns) * np.array([np.cos(heading), np.sin(heading)])
            points.append(point)
        xy = [(float(p[0] * size), float(p[1] * size)) for p in points]
        draw.line(xy, fill=255, width=max(1, int(round(width * size))), joint="curve")
    return np.asarray(canvas) > 127


MASK_SHAPES: dict[str, Callable[[np.random.Generator, int, float], np.ndarray]] = {
    "solid": _solid,
    "parts": _parts,
    "thin": _thin,
}
_SHAPE_WEIGHTS = np.array([0.6, 0.25, 0.15])


def sample_mask(rng: np.random.Generator, size: int, max_tries: int = 50) -> tuple[np.ndarray, str]:
    """Returns a bool [size, size] region covering 5-50 % of the image, placed anywhere, and its kind.

    The shape's area is drawn log-uniformly in [MIN_FG_FRACTION, MAX_FG_FRACTION]; a shape whose
    visible (clipped) area falls outside that range is redrawn.
    """
    for _ in range(max_tries):
        kind = str(rng.choice(list(MASK_SHAPES), p=_SHAPE_WEIGHTS))
        area = float(np.exp(rng.uniform(np.log(MIN_FG_FRACTION), np.log(MAX_FG_FRACTION))))
        mask = MASK_SHAPES[kind](rng, size, area)
        if MIN_FG_FRACTION <= mask.mean() <= MAX_FG_FRACTION:
            return mask, kind
    raise RuntimeError(f"no region of 5-50 % in {max_tries} draws at size {size}")  # pragma: no cover

# ----------------------------------------------------------------------------------------------
# Foreground appearance changes. Each acts on float RGB pixels in [0, 1] of shape [N, 3].


def _signed_log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """exp(+-u), u ~ U(log lo, log hi): a factor in [1/hi, 1/lo] or [lo, hi]."""
    value = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return value if rng.random() < 0.5 else 1.0 / value


def _lab(pixels: np.ndarray) -> np.ndarray:
    return color.rgb2lab(pixels[:, None, :])[:, 0, :]


def _color_transfer(rng, pixels, reference):
    """Reinhard et al. 2001 colour transfer in Lab: match the foreground's per-channel mean/std to
    the statistics of a crop of another photo, blended with strength alpha."""
    lab = _lab(pixels)
    ref = _lab(reference)
    mu_s, sd_s = lab.mean(0), lab.std(0) + 1e-3
    mu_t, sd_t = ref.mean(0), ref.std(0) + 1e-3
    gain = np.clip(sd_t / sd_s, 0.5, 2.0)
    alpha = rng.uniform(0.6, 1.0)
    out = lab + alpha * ((lab - mu_s) * gain + mu_t - lab)
    with warnings.catch_warnings():  # Out-of-gamut colours are clipped; that is intended.
        warnings.simplefilter("ignore", UserWarning)
        return color.lab2rgb(out[:, None, :])[:, 0, :]


def _exposure(rng, pixels, reference):
    return pixels * _signed_log_uniform(rng, 1.25, 1.7)


def _gamma(rng, pixels, reference):
    return np.power(pixels, _signed_log_uniform(rng, 1.3, 2.0))


def _white_balance(rng, pixels, reference):
    """Per-channel gains, i.e. a wrong white point; mean gain 1 keeps the brightness."""
    direction = rng.standard_normal(3)
    direction -= direction.mean()
    direction /= np.abs(direction).max() + 1e-6
    gains = np.exp(rng.uniform(0.15, 0.35) * direction)
    return pixels * (gains / gains.mean())


def _saturation(rng, pixels, reference):
    hsv = color.rgb2hsv(pixels[:, None, :])
    factor = rng.uniform(0.25, 0.6) if rng.random() < 0.5 else rng.uniform(1.5, 2.2)
    hsv[..., 1] = np.clip(hsv[..., 1] * factor, 0.0, 1.0)
    return color.hsv2rgb(hsv)[:, 0, :]


def _hue(rng, pixels, reference):
    hsv = color.rgb2hsv(pixels[:, None, :])
    shift = rng.uniform(0.04, 0.12) * (1 if rng.random() < 0.5 else -1)
    hsv[..., 0] = (hsv[..., 0] + shift) % 1.0
    return color.hsv2rgb(hsv)[:, 0, :]


APPEARANCE_CHANGES = {
    "color_transfer": _color_transfer,
    "exposure": _exposure,
    "gamma": _gamma,
    "white_balance": _white_balance,
    "saturation": _saturation,
    "hue": _hue,
}
# Colour transfer is what most iHarmony4 (HCOCO) composites use, so it is drawn twice as often.
_CHANGE_WEIGHTS = np.array([2.0, 1.0, 1.0, 1.0, 1.0, 1.0]) / 7.0


def _reference_pixels(rng: np.random.Generator, photo: str, split: str) -> np.ndarray:
    """Pixels of a random crop of another photo (same split's region), downsampled, in [0, 1]."""
    names = [n for n in PHOTOS if n != photo]
    other = names[int(rng.integers(len(names)))]
    box = sample_box(rng, other, split)
    sub = int(rng.integers(max(8, box.size // 4), box.size + 1))
    sub_box = Box(
        box.y0 + int(rng.integers(0, box.size - sub + 1)),
        box.x0 + int(rng.integers(0, box.size - sub + 1)),
        sub,
    )
    patch = crop_resize(load_photo(other), sub_box, 48)
    return patch.reshape(-1, 3).astype(np.float64) / 255.0


def scene_variation(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A mild, image-wide photometric change (exposure, gamma, white balance, hue) of the source crop.

    Applied to the whole photo before compositing, so `real` and the composite's background
    share it. With eight source photos a network could otherwise memorize each photo's true
    colours and spot the foreground by recall; varying the scene's look leaves the foreground /
    background inconsistency as the only cue, as in real composites.
    """
    x = image.astype(np.float64) / 255.0
    x = x * float(np.exp(rng.uniform(-0.25, 0.25)))
    x = np.power(np.clip(x, 0.0, 1.0), float(np.exp(rng.uniform(-0.2, 0.2))))
    x = x * np.exp(rng.normal(0.0, 0.06, size=3))
    hsv = color.rgb2hsv(np.clip(x, 0.0, 1.0))
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-0.08, 0.08)) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * float(np.exp(rng.uniform(-0.3, 0.3))), 0.0, 1.0)
    return np.rint(np.clip(color.hsv2rgb(hsv), 0.0, 1.0) * 255.0).astype(np.uint8)


def change_appearance(
    rng: np.random.Generator, pixels: np.ndarray, photo: str, split: str, max_tries: int = 6
) -> tuple[np.ndarray, list[str]]:
    """Applies one or two random appearance changes to uint8 [N, 3] foreground pixels.

    Redraws (up to ``max_tries``) until the mean absolute change is at least MIN_VISIBLE_CHANGE,
    keeping the strongest draw otherwise. Returns the new uint8 pixels and the changes' names.
    """
    x = pixels.astype(np.float64) / 255.0
    best, best_diff, best_names = pixels, -1.0, []
    for _ in range(max_tries):
        count = 1 if rng.random() < 0.6 else 2
        names = rng.choice(list(APPEARANCE_CHANGES), size=count, replace=False, p=_CHANGE_WEIGHTS)
        y = x
        for name in names:
            reference = _reference_pixels(rng, photo, split) if name == "color_transfer" else None
            y = np.clip(APPEARANCE_CHANGES[name](rng, y, reference), 0.0, 1.0)
        out = np.rint(y * 255.0).astype(np.uint8)
        diff = float(np.abs(out.astype(np.int16) - pixels.astype(np.int16)).mean())
        if diff > best_diff:
            best, best_diff, best_names = out, diff, [str(n) for n in names]
        if diff >= MIN_VISIBLE_CHANGE:
            break
    return best, best_names


# ----------------------------------------------------------------------------------------------
# Examples.


def example_rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    return np.random.default_rng([int(seed), SPLITS.index(split), int(index)])


def example_name(photo: str, split: str, index: int) -> str:
    """iHarmony-style composite name ``a_b_c.png`` (real ``a``, mask ``a_b``)."""
    return f"{photo}-{split}{index:06d}_1_1.png"


def generate_example(split: str, index: int, *, image_size: int = 256, seed: int = 0) -> dict:
    """Generates synthetic example ``index`` of ``split``.

    Returns a dict with ``composite`` and ``real`` uint8 [S, S, 3], ``mask`` uint8 [S, S, 1] in
    {0, 255}, ``mask_fraction`` float, ``subset``/``name`` str, plus provenance: ``photo``, ``box``
    (the crop Box in the source photo), ``mask_kind`` and ``changes``.
    """
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    rng = example_rng(seed, split, index)
    photo = str(rng.choice(list(PHOTOS)))
    box = sample_box(rng, photo, split)
    real = crop_resize(load_photo(photo), box, image_size)
    if rng.random() < 0.5:
        real = np.ascontiguousarray(real[:, ::-1])
    real = scene_variation(rng, real)
    mask, mask_kind = sample_mask(rng, image_size)
    composite = real.copy()
    composite[mask], changes = change_appearance(rng, real[mask], photo, split)
    return {
        "composite": composite,
        "mask": (mask[..., None] * np.uint8(255)).astype(np.uint8),
        "real": real,
        "mask_fraction": float(mask.mean()),
        "subset": SUBSET,
        "name": example_name(photo, split, index),
        "photo": photo,
        "box": box,
        "mask_kind": mask_kind,
        "changes": changes,
    }

"""Pictures of results: contact sheets of composites, ground truths and predictions."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from jirl import files


def region_offset(mask: np.ndarray) -> float:
    """Distance of a mask's centre of mass from the image centre, in units of the image side.

    0 for a region centred in the image, about 0.7 for one in a corner; NaN for an empty mask.
    """
    m = np.asarray(mask, np.float64).reshape(mask.shape[0], mask.shape[1])
    total = m.sum()
    if total <= 0:
        return float("nan")
    h, w = m.shape
    cy = (m.sum(1) * (np.arange(h) + 0.5)).sum() / total / h
    cx = (m.sum(0) * (np.arange(w) + 0.5)).sum() / total / w
    return float(np.hypot(cy - 0.5, cx - 0.5))


def _to_rgb_u8(x: np.ndarray) -> np.ndarray:
    """[H, W, 1|3] values in [0, 1] -> [H, W, 3] uint8."""
    x = np.asarray(x, np.float32)
    if x.ndim == 2:
        x = x[..., None]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], gap: int = 2, scale: int = 1) -> np.ndarray:
    """Tiles ``rows`` of equally sized [H, W, 1|3] images in [0, 1] into one uint8 RGB image.

    Each tile is enlarged ``scale`` times (nearest neighbour, so pixels stay visible as pixels); a
    ``gap``-pixel white border separates the tiles.
    """
    if not rows or not rows[0]:
        raise ValueError("contact_sheet needs at least one row of images")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    tiles = [[_to_rgb_u8(t).repeat(scale, axis=0).repeat(scale, axis=1) for t in row] for row in rows]
    h, w = tiles[0][0].shape[:2]
    cols = max(len(r) for r in tiles)
    sheet = np.full((len(tiles) * (h + gap) + gap, cols * (w + gap) + gap, 3), 255, np.uint8)
    for i, row in enumerate(tiles):
        for j, tile in enumerate(row):
            if tile.shape[:2] != (h, w):
                raise ValueError(f"tile ({i}, {j}) is {tile.shape[:2]}, expected {(h, w)}")
            y, x = gap + i * (h + gap), gap + j * (w + gap)
            sheet[y:y + h, x:x + w] = tile
    return sheet


def save_image(path: str, image: np.ndarray, image_format: str | None = None,
               quality: int = 95) -> None:
    """Writes a uint8 [H, W(, 3)] image atomically (`jirl.files.atomic_write`). Format:
    `image_format` ("png" | "jpeg"), else from the extension (.jpg / .jpeg: JPEG at `quality`
    without chroma subsampling), else PNG."""
    if image_format is None:
        image_format = "jpeg" if os.path.splitext(path)[1].lower() in (".jpg", ".jpeg") else "png"
    options = {"quality": quality, "subsampling": 0} if image_format == "jpeg" else {}
    with files.atomic_write(path, "wb") as f:
        Image.fromarray(image).save(f, format=image_format.upper(), **options)


def save_png(path: str, image: np.ndarray) -> None:
    """Writes a uint8 image as PNG atomically (a temporary file, then a rename)."""
    save_image(path, image, image_format="png")


def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion of a bool [H, W] mask by a 3 x 3 cross, `steps` times (outside is False)."""
    m = mask.copy()
    for _ in range(steps):
        inner = m.copy()
        inner[1:] &= m[:-1]
        inner[:-1] &= m[1:]
        inner[:, 1:] &= m[:, :-1]
        inner[:, :-1] &= m[:, 1:]
        inner[[0, -1], :] = False
        inner[:, [0, -1]] = False
        m = inner
    return m


def overlay(photo: np.ndarray, mask: np.ndarray, color: tuple[int, int, int] = (255, 40, 40),
            alpha: float = 0.4, outline: int | None = None) -> np.ndarray:
    """A uint8 [H, W, 3] photo with the bool [H, W] region tinted by `color` (weight `alpha`) and
    outlined in it (`outline` pixels wide; default ~1/300 of the shorter side, at least 1)."""
    photo = np.asarray(photo, np.uint8)
    mask = np.asarray(mask, bool)
    if mask.shape != photo.shape[:2]:
        raise ValueError(f"mask {mask.shape} and photo {photo.shape[:2]} differ in size")
    width = outline if outline is not None else max(1, round(min(mask.shape) / 300))
    tint = np.asarray(color, np.float32)
    out = photo.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * tint
    out[mask & ~_erode(mask, width)] = tint
    return np.rint(out).astype(np.uint8)

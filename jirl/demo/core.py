"""The demo's work, free of any web framework: one photo in, the pictures the page shows out.

`Demo.analyze` runs the same `jirl.Localizer` / `jirl.Harmonizer` as predict.py (no second
inference path) at the photo's own size under the chosen resolution policy, and turns every bad
upload (not an image, corrupt, too large, an unusable mask) into a `DemoError` whose message the
page shows: the server never sees an exception from a user's file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Collection
from typing import IO

import numpy as np
from PIL import Image

from jirl import visualize
from jirl.data import images as jimages
from jirl.data import synthetic
from jirl.inference import DEFAULT_LONG_SIDE, POLICIES, Harmonizer, Localizer, as_mask, binary_mask

MAX_PIXELS = 50_000_000  # a photo's decoded size (50 MP: every common camera)
MAX_RUN_PIXELS = 4_194_304  # what "native" / "long_side" may run a model at (2048 x 2048)
CACHE_MB = 500  # disk for the page's files (uploads, pictures sent): the oldest go beyond it


class DemoError(Exception):
    """A problem with what the user gave (the message is shown on the page as it is)."""


@dataclasses.dataclass
class Result:
    """What the page shows for one photo; pictures are uint8 at the photo's size."""

    photo: np.ndarray  # [H, W, 3]
    probability: np.ndarray  # [H, W] uint8, the probability map x 255
    overlay: np.ndarray  # [H, W, 3], the region (binary mask) tinted and outlined
    region: np.ndarray  # [H, W] bool, the region harmonized (the localizer's or the user's)
    retouched: np.ndarray | None  # [H, W, 3] MadisNet's colour-mapped image I'
    harmonized: np.ndarray | None  # [H, W, 3]
    seconds: dict[str, float]  # "decode", "localize", "harmonize", "compile", "total"
    policy: str
    run_size: tuple[int, int]  # (height, width) the localizer ran at, padding excluded

    def summary(self, model: str, harmonizer: str | None) -> str:
        """One Markdown line: sizes, region share and the time per stage."""
        h, w = self.photo.shape[:2]
        s = self.seconds
        parts = [f"**{model}** on {w}×{h} (policy {self.policy}, run at "
                 f"{self.run_size[1]}×{self.run_size[0]}): region {self.region.mean():.1%} of "
                 f"the photo; localize {s['localize']:.2f} s"]
        if self.harmonized is not None:
            parts.append(f"harmonize ({harmonizer}) {s['harmonize']:.2f} s")
        parts.append(f"total {s['total']:.2f} s")
        text = ", ".join(parts)
        if s["compile"] > 0:
            text += f" (of which {s['compile']:.1f} s compiling for a new size)"
        return text


def check_pixels(source: str | IO[bytes], max_pixels: int, what: str = "the photo") -> None:
    """Refuses an image whose header announces more than `max_pixels`, before anything decodes
    it (`jirl.data.images.check_pixels`); a header PIL cannot read is left to the decoder."""
    try:
        jimages.check_pixels(source, max_pixels)
    except jimages.TooLargeError as e:
        size = (f"{e.width}×{e.height} ({e.width * e.height / 1e6:.0f} MP)" if e.width
                else str(e).split(" (")[0])
        raise DemoError(f"{what} is {size}, more than this demo accepts "
                        f"({max_pixels / 1e6:.0f} MP; --max_pixels)") from e


def load_photo(path: str | None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An uploaded file as an upright uint8 [H, W, 3] photo (predict.py's decoder), else
    DemoError saying what is wrong with it."""
    if not path:
        raise DemoError("upload a photo first (or pick a sample)")
    if not os.path.isfile(path):
        raise DemoError(f"the upload {os.path.basename(path)} is gone; upload it again")
    check_pixels(path, max_pixels)
    try:
        return jimages.load_rgb(path).array
    except jimages.BadImageError as e:
        raise DemoError(f"{os.path.basename(path)} is not a usable image: {e}") from e


class Demo:
    """A localizer (and optionally a harmonizer) behind the page, one Localizer per policy, all
    sharing the model and its compiled programs (`Localizer.with_policy`)."""

    def __init__(self, localizer: Localizer, harmonizer: Harmonizer | None = None, *,
                 max_pixels: int = MAX_PIXELS, max_run_pixels: int = MAX_RUN_PIXELS):
        self.harmonizer = harmonizer
        self.max_pixels, self.max_run_pixels = max_pixels, max_run_pixels
        self._localizers = {(localizer.resize, localizer.long_side): localizer}
        self._default = localizer

    @property
    def model_name(self) -> str:
        return self._default.name

    @property
    def policy(self) -> tuple[str, int | None]:
        """The resolution policy (and long side) the page starts with: the localizer's."""
        return self._default.resize, self._default.long_side

    @property
    def has_retouched(self) -> bool:
        """Whether the localizer draws a colour-mapped image I' (MadisNet)."""
        return self._default.loaded.spec.eval_images is not None

    def localizer(self, policy: str, long_side: int | None = None) -> Localizer:
        """The localizer under `policy` (sharing the loaded model)."""
        if policy not in POLICIES:
            raise DemoError(f"unknown resolution policy {policy!r}; use one of {POLICIES}")
        long_side = int(long_side or DEFAULT_LONG_SIDE) if policy == "long_side" else None
        key = (policy, long_side)
        if key not in self._localizers:
            try:
                self._localizers[key] = self._default.with_policy(policy, long_side)
            except ValueError as e:
                raise DemoError(str(e)) from e
        return self._localizers[key]

    def _localize(self, photo: np.ndarray, policy: str, long_side: int | None
                  ) -> tuple[dict, tuple[int, int], float]:
        """(the localizer's outputs at the photo's size, the size it ran at, seconds compiling)."""
        localizer = self.localizer(policy, long_side)
        plan = localizer.plan(*photo.shape[:2])
        if plan.padded[0] * plan.padded[1] > self.max_run_pixels:
            raise DemoError(f"policy {policy} would run the model at {plan.padded[1]}×"
                            f"{plan.padded[0]}, more than {self.max_run_pixels / 1e6:.1f} MP "
                            "(--max_run_pixels): choose long_side or train")
        compiled = localizer.compile_seconds
        out = localizer.predict([photo])[0]
        return out, plan.run, localizer.compile_seconds - compiled

    @staticmethod
    def _user_region(mask: str | np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """A mask file (resized nearest), or a drawn [h, w] bool region (resized nearest to the
        photo if drawn at another size), as bool [H, W]."""
        if isinstance(mask, np.ndarray):
            if not mask.any():
                raise DemoError("draw over the region to harmonize first")
            if mask.shape != tuple(size):
                drawn = Image.fromarray(mask.astype(np.uint8) * 255)
                mask = np.asarray(drawn.resize(size[::-1], Image.Resampling.NEAREST)) > 0
            return mask
        try:
            return as_mask(mask, size)
        except (jimages.BadImageError, ValueError) as e:
            reason = e.__cause__ or e  # as_mask names the file; the page names it more shortly
            raise DemoError(f"the mask {os.path.basename(mask)} is not usable: {reason}") from e

    def analyze(self, path: str | None, policy: str = "train", long_side: int | None = None,
                mask: str | np.ndarray | None = None) -> Result:
        """Localizes the inharmonious region of the photo at `path` and, with a harmonizer,
        harmonizes it, or the user's region instead: `mask`, a mask file or a drawn bool array."""
        start = time.perf_counter()
        photo = load_photo(path, self.max_pixels)
        if isinstance(mask, str) and mask:
            check_pixels(mask, self.max_pixels, f"the mask {os.path.basename(mask)}")
        decoded = time.perf_counter()
        out, run_size, compile_s = self._localize(photo, policy, long_side)
        region = binary_mask(out["mask"])
        localized = time.perf_counter()
        if isinstance(mask, np.ndarray) or mask:  # a drawn region, or a mask file's path
            region = self._user_region(mask, photo.shape[:2])
        harmonized = self.harmonizer(photo, region) if self.harmonizer is not None else None
        done = time.perf_counter()
        retouched = out.get("retouched")
        return Result(
            photo=photo, probability=np.rint(out["mask"] * 255).astype(np.uint8),
            overlay=visualize.overlay(photo, region), region=region,
            retouched=None if retouched is None else np.rint(retouched * 255).astype(np.uint8),
            harmonized=harmonized, policy=policy, run_size=run_size,
            seconds={"decode": decoded - start, "localize": localized - decoded,
                     "harmonize": done - localized, "compile": compile_s, "total": done - start})

    def warm_up(self) -> float:
        """Compiles the program of a training-size photo (and the harmonizer's) before the first
        upload; returns the seconds it took. (native / long_side compile per photo size.)"""
        start = time.perf_counter()
        side = self._default.train_size
        photo = np.zeros((side, side, 3), np.uint8)
        self._default.predict([photo])
        if self.harmonizer is not None:
            region = np.zeros((side, side), bool)
            region[: side // 2] = True
            self.harmonizer(photo, region)
        return time.perf_counter() - start


def write_samples(directory: str, count: int = 4, size: int = 384, seed: int = 0) -> list[str]:
    """Writes `count` composites of the embedded synthetic test split as PNGs (the same ones on
    every start) and returns their paths: the page's sample photos."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for index in range(count):
        example = synthetic.generate_example("test", index, image_size=size, seed=seed)
        path = os.path.join(directory, f"sample_{index}_{example['photo']}.png")
        if not os.path.exists(path):
            visualize.save_png(path, example["composite"])
        paths.append(path)
    return paths


def _files_oldest_first(directory: str) -> list[tuple[float, str, int]]:
    """(modification time, path, bytes) of every file under `directory`, the oldest first."""
    files = []
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with contextlib.suppress(FileNotFoundError):
                stat = os.stat(path)
                files.append((stat.st_mtime, path, stat.st_size))
    return sorted(files)


def _remove(path: str, directory: str) -> None:
    """Removes a file, and its folder when that is left empty (Gradio keeps one file a folder)."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
    if os.path.dirname(path) != directory:
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(path))


def trim_folder(directory: str, max_bytes: int, keep: Collection[str] = ()) -> list[str]:
    """Deletes the oldest files (by modification time) under `directory` until the rest take at
    most `max_bytes`, never one in or under a path of `keep`; returns the paths deleted."""
    directory = os.path.abspath(directory)
    files = _files_oldest_first(directory)
    total = sum(size for _, _, size in files)
    kept = tuple(os.path.abspath(k) for k in keep)
    deleted = []
    for _, path, size in files:
        if total <= max_bytes:
            break
        if not any(path == k or path.startswith(k + os.sep) for k in kept):
            _remove(path, directory)
            total -= size
            deleted.append(path)
    return deleted

"""predict.py's work: find the photos, localize (and harmonize) them in batches, write the outputs.

Per photo `<name>` (its path relative to the input folder, without the extension), under the
output directory, at the photo's own resolution:

* `<name>_mask.png`: the probability map (8 bits); `<name>_mask_bin.png`: the binary mask (0/255);
* `<name>_overlay.jpg`: the photo with the region tinted and outlined;
* `<name>_harmonized.jpg` with a harmonizer;
* one line of `predictions.jsonl`.

Unreadable photos are skipped (one line each, counted); a photo whose outputs exist is left alone
unless `overwrite`; every image is written to a temporary file and renamed.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import sys
import time
from collections.abc import Iterator

import numpy as np
from absl import app, flags
from etils import epath
from tqdm import tqdm

from jirl import files as jfiles
from jirl import visualize
from jirl.data import images as jimages
from jirl.inference import DEFAULT_LONG_SIDE, POLICIES, Harmonizer, Localizer, as_mask, binary_mask

JSONL = "predictions.jsonl"


def define_resize_flags(default: str = "train") -> None:
    """--resize train|native|long_side and --long_side N: the resolution policy of predict and
    the demo (`jirl.inference`)."""
    flags.DEFINE_enum("resize", default, list(POLICIES), "Resolution policy: train (the model's "
                      "training size), native (the photo's own) or long_side (--long_side N).")
    flags.DEFINE_integer("long_side", None, "With --resize long_side (implied when given alone): "
                         f"the longer side the photo runs at, in pixels (default {DEFAULT_LONG_SIDE}).",
                         lower_bound=1)


def resize_policy() -> tuple[str, int | None]:
    """(policy, long side) from --resize / --long_side: --long_side alone means long_side, which
    without a size runs at DEFAULT_LONG_SIDE; a size with another policy is a usage error."""
    resize, long_side = flags.FLAGS.resize, flags.FLAGS.long_side
    if long_side is not None and not flags.FLAGS["resize"].present:
        resize = "long_side"
    if resize != "long_side":
        if long_side is not None:
            raise app.UsageError(f"--long_side goes with --resize long_side, not --resize {resize}")
        return resize, None
    return resize, long_side or DEFAULT_LONG_SIDE


def default_compile_cache() -> str:
    """Where predict keeps its compiled programs: $XDG_CACHE_HOME/jirl/xla (~/.cache/...)."""
    return jfiles.user_cache_dir("xla")


def enable_compile_cache(path: str) -> None:
    """Keeps every program jax compiles from now on in `path` (jax's persistent compilation
    cache), so that the next run with the same model, shapes and dtype loads it instead of
    compiling it again."""
    import jax

    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@dataclasses.dataclass(frozen=True)
class Photo:
    """An input file and its name under the output directory (relative path, no extension)."""

    path: str
    name: str


def find_photos(spec: str, exclude: str | None = None) -> list[Photo]:
    """The photos named by `spec`: an image file, a folder (searched recursively) or a glob
    pattern, sorted; files under `exclude` (the output directory) are left out. Raises
    FileNotFoundError when `spec` names nothing."""
    spec = os.path.expanduser(spec)
    if os.path.isfile(spec):
        return [Photo(os.path.abspath(spec), os.path.splitext(os.path.basename(spec))[0])]
    if os.path.isdir(spec):
        root = os.path.abspath(spec)
        paths = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]
    else:
        paths = [os.path.abspath(p) for p in glob.glob(spec, recursive=True)]
        if not paths:
            raise FileNotFoundError(f"--input {spec}: no such file or folder, and no file matches "
                                    "it as a pattern")
        root = os.path.commonpath([os.path.dirname(p) for p in paths])
    skip = os.path.abspath(exclude) + os.sep if exclude else None
    photos = [Photo(p, os.path.splitext(os.path.relpath(p, root))[0]) for p in sorted(paths)
              if jimages.is_image_file(epath.Path(p)) and not (skip and p.startswith(skip))]
    if not photos:
        kinds = ", ".join(sorted({e.lower() for e in jimages.IMAGE_EXTENSIONS}))
        raise FileNotFoundError(f"--input {spec}: no image files ({kinds})")
    return photos


def output_paths(out_dir: str, photo: Photo, *, localize: bool, harmonize: bool,
                 image_format: str = "jpg") -> dict[str, str]:
    """{kind: path} of the files written for `photo`."""
    base = os.path.join(out_dir, photo.name)
    paths = {}
    if localize:
        paths.update(mask=f"{base}_mask.png", mask_bin=f"{base}_mask_bin.png",
                     overlay=f"{base}_overlay.{image_format}")
    if harmonize:
        paths["harmonized"] = f"{base}_harmonized.{image_format}"
    return paths


@dataclasses.dataclass
class Summary:
    """What a run did: counts, wall time and compilations."""

    written: int = 0
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (file, reason)
    kept: int = 0  # outputs existed
    seconds: float = 0.0
    compilations: int = 0

    def line(self) -> str:
        rate = self.written / self.seconds if self.seconds else 0.0
        return (f"{self.written} photos written, {len(self.skipped)} unreadable skipped, "
                f"{self.kept} left as they were (outputs exist; --overwrite), in "
                f"{self.seconds:.1f} s ({rate:.2f} photos/s); {self.compilations} compilations")


@dataclasses.dataclass
class _Loaded:
    photo: Photo
    pixels: np.ndarray
    paths: dict[str, str]
    seconds: float
    user_mask: np.ndarray | None = None


class Predictor:
    """Runs a localizer (or a user's masks) and optionally a harmonizer over photos."""

    def __init__(self, out_dir: str, *, localizer: Localizer | None = None,
                 harmonizer: Harmonizer | None = None, mask_spec: str | None = None,
                 normalize: bool = True, overwrite: bool = False, batch_size: int = 1,
                 image_format: str = "jpg"):
        if localizer is None and (harmonizer is None or mask_spec is None):
            raise ValueError("give a localizer checkpoint, or a harmonizer and --mask")
        if localizer is not None and mask_spec is not None:
            raise ValueError("--mask replaces the localizer: give --checkpoint or --mask, not both")
        if image_format not in ("jpg", "png"):
            raise ValueError(f"image_format={image_format!r}; use jpg or png")
        self.out_dir, self.localizer, self.harmonizer = out_dir, localizer, harmonizer
        self.mask_spec, self.normalize, self.overwrite = mask_spec, normalize, overwrite
        self.batch_size, self.image_format = max(1, batch_size), image_format
        self.summary = Summary()
        self._bar = None

    def _user_mask(self, photo: Photo, size: tuple[int, int]) -> np.ndarray:
        spec = self.mask_spec
        path = spec if os.path.isfile(spec) else str(jimages.find_with_extensions(
            epath.Path(spec) / os.path.dirname(photo.name), os.path.basename(photo.name), ".png",
            jimages.MASK_EXTENSIONS))
        return as_mask(path, size)

    def _load(self, photo: Photo) -> _Loaded | None:
        start = time.perf_counter()
        paths = output_paths(self.out_dir, photo, localize=self.localizer is not None,
                             harmonize=self.harmonizer is not None, image_format=self.image_format)
        if not self.overwrite and any(os.path.exists(p) for p in paths.values()):
            self.summary.kept += 1
            self._bar.update(1)
            return None
        try:
            pixels = jimages.load_rgb(photo.path).array
            user_mask = self._user_mask(photo, pixels.shape[:2]) if self.mask_spec else None
        except (jimages.BadImageError, ValueError) as e:
            tqdm.write(f"skipped {photo.path}: {e}", file=sys.stderr)
            self.summary.skipped.append((photo.path, str(e)))
            self._bar.update(1)
            return None
        return _Loaded(photo, pixels, paths, time.perf_counter() - start, user_mask)

    def _batches(self, photos: list[Photo]) -> Iterator[list[_Loaded]]:
        """Loaded photos grouped by the shape they run at, `batch_size` at a time."""
        pending: dict[tuple, list[_Loaded]] = {}
        for photo in photos:
            item = self._load(photo)
            if item is None:
                continue
            key = self.localizer.plan(*item.pixels.shape[:2]).padded if self.localizer else ()
            group = pending.setdefault(key, [])
            group.append(item)
            if len(group) == self.batch_size:
                yield pending.pop(key)
        yield from pending.values()

    def _localize(self, items: list[_Loaded]) -> list[np.ndarray]:
        """Probability maps at each photo's size; the batch is padded to `batch_size` rows so
        that one shape compiles once."""
        start = time.perf_counter()
        prepared = [self.localizer.prepare(i.pixels) for i in items]
        inputs = np.stack([x for _, x in prepared])
        inputs = np.pad(inputs, [(0, self.batch_size - len(items))] + [(0, 0)] * 3)
        masks = self.localizer.run(inputs)["mask"]
        probs = [self.localizer.finish(masks[k], plan) for k, (plan, _) in enumerate(prepared)]
        share = (time.perf_counter() - start) / len(items)
        for item in items:
            item.seconds += share
        return probs

    def _write(self, item: _Loaded, prob: np.ndarray | None) -> dict:
        start = time.perf_counter()
        record = {"file": item.photo.path, "name": item.photo.name,
                  "width": int(item.pixels.shape[1]), "height": int(item.pixels.shape[0])}
        if prob is not None:
            region = binary_mask(prob, self.normalize)
            visualize.save_image(item.paths["mask"], np.rint(prob * 255).astype(np.uint8))
            visualize.save_image(item.paths["mask_bin"], np.where(region, 255, 0).astype(np.uint8))
            visualize.save_image(item.paths["overlay"], visualize.overlay(item.pixels, region))
            record.update(mask_area=float(region.mean()), max_probability=float(prob.max()),
                          model=self.localizer.name, checkpoint=self.localizer.loaded.checkpoint,
                          resize=self.localizer.resize, dtype=self.localizer.dtype,
                          normalized=self.normalize)
        else:
            region = item.user_mask
            record.update(mask_area=float(region.mean()), mask="user")
        if self.harmonizer is not None:
            visualize.save_image(item.paths["harmonized"], self.harmonizer(item.pixels, region))
            record.update(harmonizer=self.harmonizer.name,
                          harmonizer_checkpoint=self.harmonizer.loaded.checkpoint)
        record["outputs"] = {k: os.path.relpath(p, self.out_dir) for k, p in item.paths.items()}
        record["seconds"] = round(item.seconds + time.perf_counter() - start, 4)
        return record

    def run(self, photos: list[Photo], progress: bool = True) -> Summary:
        """Processes `photos`, appending to `<out_dir>/predictions.jsonl`; returns the summary."""
        os.makedirs(self.out_dir, exist_ok=True)
        start = time.perf_counter()
        self._bar = bar = tqdm(total=len(photos), unit="photo", dynamic_ncols=True,
                               disable=not progress or len(photos) < 2)
        with open(os.path.join(self.out_dir, JSONL), "a", encoding="utf-8") as jsonl:
            for items in self._batches(photos):
                probs = self._localize(items) if self.localizer else [None] * len(items)
                for item, prob in zip(items, probs, strict=True):
                    jsonl.write(json.dumps(self._write(item, prob)) + "\n")
                    jsonl.flush()
                    self.summary.written += 1
                    bar.update(1)
        bar.close()
        self.summary.seconds = time.perf_counter() - start
        self.summary.compilations = sum(m.compilations for m in (self.localizer, self.harmonizer)
                                        if m is not None)
        return self.summary

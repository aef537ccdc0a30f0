"""predict.py's work: find the photos, localize (and harmonize) them in batches, write the outputs.

Per photo `<name>` (its path relative to the input folder, without the extension; with it where
two files would share the name: dup.jpg, dup.png), under the output directory, at the photo's own
resolution:

* `<name>_mask.png`: the probability map (8 bits); `<name>_mask_bin.png`: the binary mask (0/255);
* `<name>_overlay.jpg`: the photo with the region tinted and outlined;
* `<name>_harmonized.jpg` with a harmonizer;
* one line of `predictions.jsonl` (strict JSON), written last: the photo's commit.

A photo is done when all its outputs exist and its record lists them; a rerun redoes every other
one (after Ctrl-C, a kill or a full disk), removing what was left of it. Unreadable photos and
those over `max_pixels` are skipped (one line each, counted); done photos are left alone unless
`overwrite`; every image is written to a temporary file and renamed. Inputs are found once each
by real path, and the output folder is never read back.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import IO

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
    """An input file and its name under the output directory (relative path, no extension; with
    the extension where two files would share it); `stem`: its relative path without the
    extension, where its --mask is looked up (None: `name`)."""

    path: str
    name: str
    stem: str | None = None


def find_photos(spec: str, exclude: str | None = None) -> list[Photo]:
    """The photos named by `spec`: an image file, a folder (searched recursively) or a glob
    pattern, sorted; each file once, by real path (a glob through a symlink loop finds one photo
    under many names), files under `exclude` (the output directory, compared by real path) left
    out. Raises FileNotFoundError when `spec` names nothing."""
    spec = os.path.expanduser(spec)
    if os.path.isfile(spec):
        stem = os.path.splitext(os.path.basename(spec))[0]
        return [Photo(os.path.abspath(spec), stem, stem)]
    if os.path.isdir(spec):
        root = os.path.abspath(spec)
        paths = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files]
    else:
        paths = [os.path.abspath(p) for p in glob.glob(spec, recursive=True)]
        if not paths:
            raise FileNotFoundError(f"--input {spec}: no such file or folder, and no file matches "
                                    "it as a pattern")
        root = os.path.commonpath([os.path.dirname(p) for p in paths])
    skip = os.path.realpath(exclude) if exclude else None
    paths = [p for p in _unique_files(paths, skip) if jimages.is_image_file(epath.Path(p))]
    if not paths:
        kinds = ", ".join(sorted({e.lower() for e in jimages.IMAGE_EXTENSIONS}))
        raise FileNotFoundError(f"--input {spec}: no image files ({kinds})")
    relative = [os.path.relpath(p, root) for p in paths]
    return [Photo(p, name, os.path.splitext(r)[0])
            for p, r, name in zip(paths, relative, _unique_names(relative), strict=True)]


def _unique_files(paths: list[str], skip: str | None = None) -> list[str]:
    """`paths` with each real file once, sorted (the route without symlinks kept where there is
    one, else the first), leaving out those whose real path is under `skip` (a real path)."""
    real = {p: os.path.realpath(p) for p in paths}
    chosen: dict[str, str] = {}
    for path in sorted(paths, key=lambda p: (real[p] != p, p)):
        if not (skip and (real[path] + os.sep).startswith(skip + os.sep)):
            chosen.setdefault(real[path], path)
    return sorted(chosen.values())


def _unique_names(relative: list[str]) -> list[str]:
    """Output names of distinct relative paths: each without its extension, except where that
    name would be shared (dup.jpg, dup.png): those keep theirs."""
    names = [os.path.splitext(r)[0] for r in relative]
    while True:
        counts = collections.Counter(names)
        clashing = [i for i, n in enumerate(names) if counts[n] > 1 and n != relative[i]]
        if not clashing:
            return names
        for i in clashing:
            names[i] = relative[i]


def prepare_output(out_dir: str) -> None:
    """Creates `out_dir` and checks that files can be written in it; else OSError saying why,
    in one line."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OSError(f"the output folder {out_dir} is a file, not a folder")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the output folder {out_dir}: {e.strerror or e}") from e
    try:
        fd, probe = tempfile.mkstemp(prefix=".jirl-probe.", dir=out_dir)
        os.close(fd)
        os.remove(probe)
        if os.path.exists(jsonl := os.path.join(out_dir, JSONL)):
            open(jsonl, "a").close()
    except OSError as e:
        raise OSError(f"cannot write in the output folder {out_dir}: {e.strerror or e}") from e


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
    kept: int = 0  # done by an earlier run (outputs and record)
    seconds: float = 0.0
    compilations: int = 0

    def line(self) -> str:
        rate = self.written / self.seconds if self.seconds else 0.0
        return (f"{self.written} photos written, {len(self.skipped)} unreadable skipped, "
                f"{self.kept} left as they were (done before; --overwrite), in "
                f"{self.seconds:.1f} s ({rate:.2f} photos/s); {self.compilations} compilations")


@dataclasses.dataclass
class _Loaded:
    photo: Photo
    pixels: np.ndarray
    paths: dict[str, str]
    seconds: float
    user_mask: np.ndarray | None = None


class Predictor:
    """Runs a localizer (or a user's masks) and optionally a harmonizer over photos.

    A photo is done when all its outputs exist and its record in predictions.jsonl lists them:
    the outputs are written first, the record last (the commit). Anything else a run finds of a
    photo (some outputs, a record cut short, temporary files of a killed write) is removed and
    the photo done again; `overwrite` redoes done photos too, replacing their records."""

    def __init__(self, out_dir: str, *, localizer: Localizer | None = None,
                 harmonizer: Harmonizer | None = None, mask_spec: str | None = None,
                 normalize: bool = True, overwrite: bool = False, batch_size: int = 1,
                 image_format: str = "jpg", max_pixels: int | None = jimages.MAX_PIXELS):
        if localizer is None and (harmonizer is None or mask_spec is None):
            raise ValueError("give a localizer checkpoint, or a harmonizer and --mask")
        if localizer is not None and mask_spec is not None:
            raise ValueError("--mask replaces the localizer: give --checkpoint or --mask, not both")
        if image_format not in ("jpg", "png"):
            raise ValueError(f"image_format={image_format!r}; use jpg or png")
        self.out_dir, self.localizer, self.harmonizer = out_dir, localizer, harmonizer
        self.mask_spec, self.normalize, self.overwrite = mask_spec, normalize, overwrite
        self.batch_size, self.image_format = max(1, batch_size), image_format
        self.max_pixels = max_pixels
        self.summary = Summary()
        self._bar = None

    def _paths(self, photo: Photo) -> dict[str, str]:
        return output_paths(self.out_dir, photo, localize=self.localizer is not None,
                            harmonize=self.harmonizer is not None, image_format=self.image_format)

    def _user_mask(self, photo: Photo, size: tuple[int, int]) -> np.ndarray:
        spec, stem = self.mask_spec, photo.stem if photo.stem is not None else photo.name
        path = spec if os.path.isfile(spec) else str(jimages.find_with_extensions(
            epath.Path(spec) / os.path.dirname(stem), os.path.basename(stem), ".png",
            jimages.MASK_EXTENSIONS))
        return as_mask(path, size)

    def _load(self, photo: Photo) -> _Loaded | None:
        start = time.perf_counter()
        paths = self._paths(photo)
        _remove(paths.values())  # what an interrupted run left of this photo
        try:
            pixels = jimages.load_rgb(photo.path, max_pixels=self.max_pixels).array
            user_mask = self._user_mask(photo, pixels.shape[:2]) if self.mask_spec else None
        except (jimages.BadImageError, ValueError) as e:
            reason = f"{e} (--max_pixels)" if isinstance(e, jimages.TooLargeError) else str(e)
            tqdm.write(f"skipped {photo.path}: {reason}", file=sys.stderr)
            self.summary.skipped.append((photo.path, reason))
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

    def _commit(self, jsonl: IO[str], item: _Loaded, prob: np.ndarray | None) -> None:
        """Writes a photo's outputs, then its record; when anything fails (Ctrl-C, a full disk)
        removes what the photo had written, so that the next run does it again."""
        try:
            record = self._write(item, prob)
            jsonl.write(jfiles.dumps(record) + "\n")
            jsonl.flush()
        except OSError as e:
            _remove(item.paths.values())
            raise OSError(f"writing the outputs of {item.photo.path}: {e}") from e
        except BaseException:
            _remove(item.paths.values())
            raise

    def _resume(self, photos: list[Photo]) -> list[Photo]:
        """The photos to do: predictions.jsonl keeps the records of the done ones (one each) and
        of files not in this run; cut lines, older records and stale temporary files go."""
        path = os.path.join(self.out_dir, JSONL)
        entries, damaged = read_records(path)
        mine = {(p.path, p.name): p for p in photos}
        latest = {key: i for i, (r, _) in enumerate(entries)
                  if (key := (r.get("file"), r.get("name"))) in mine}
        done = {key for key, i in latest.items()
                if not self.overwrite and self._complete(entries[i][0], mine[key])}
        files, names = {p.path for p in photos}, {p.name for p in photos}

        def keep(i: int, record: dict) -> bool:  # another run's photo, or the record of a done one
            key = (record.get("file"), record.get("name"))
            return (key[0] not in files and key[1] not in names) or (key in done and latest[key] == i)

        kept = [line for i, (record, line) in enumerate(entries) if keep(i, record)]
        if damaged or len(kept) != len(entries):
            jfiles.write_text(path, "".join(line + "\n" for line in kept))
        jfiles.remove_temporaries([path, *(q for p in photos for q in self._paths(p).values())])
        return [p for p in photos if (p.path, p.name) not in done]

    def _complete(self, record: dict, photo: Photo) -> bool:
        """Whether `record` lists all of `photo`'s outputs and they exist."""
        listed = record.get("outputs")
        return isinstance(listed, dict) and all(
            listed.get(kind) == os.path.relpath(p, self.out_dir) and os.path.isfile(p)
            for kind, p in self._paths(photo).items())

    def run(self, photos: list[Photo], progress: bool = True) -> Summary:
        """Processes the photos not done yet (all with `overwrite`), appending their records to
        `<out_dir>/predictions.jsonl`; returns the summary."""
        _check_names(photos)
        prepare_output(self.out_dir)
        start = time.perf_counter()
        todo = self._resume(photos)
        self.summary.kept = len(photos) - len(todo)
        self._bar = bar = tqdm(total=len(photos), initial=self.summary.kept, unit="photo",
                               dynamic_ncols=True, disable=not progress or len(photos) < 2)
        with open(os.path.join(self.out_dir, JSONL), "a", encoding="utf-8") as jsonl:
            for items in self._batches(todo):
                probs = self._localize(items) if self.localizer else [None] * len(items)
                for item, prob in zip(items, probs, strict=True):
                    self._commit(jsonl, item, prob)
                    self.summary.written += 1
                    bar.update(1)
        bar.close()
        self.summary.seconds = time.perf_counter() - start
        self.summary.compilations = sum(m.compilations for m in (self.localizer, self.harmonizer)
                                        if m is not None)
        return self.summary


def _check_names(photos: list[Photo]) -> None:
    """ValueError when two photos would share outputs."""
    owners: dict[str, str] = {}
    for photo in photos:
        other = owners.setdefault(photo.name, photo.path)
        if other != photo.path:
            raise ValueError(f"{other} and {photo.path} share the output name {photo.name!r}")


def read_records(path: str) -> tuple[list[tuple[dict, str]], bool]:
    """The records of a predictions.jsonl with their lines, and whether it needs rewriting: a
    line that is not a record (cut short by a kill: no JSON object with a file and a name) is
    left out."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return [], False
    entries, damaged = [], bool(text) and not text.endswith("\n")
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and all(isinstance(record.get(k), str) for k in ("file", "name")):
            entries.append((record, line))
        else:
            damaged = True
    return entries, damaged


def _remove(paths: Iterable[str]) -> None:
    """Deletes the files in `paths` that exist."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)

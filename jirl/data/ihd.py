"""TFDS builder ``ihd``: the iHarmony4 dataset (manual download), and its robust image loading.

Prepared once into ``data_dir/ihd/<config>/<version>`` as ArrayRecord files without TensorFlow:
images are handed to TFDS as encoded bytes. Clean 8-bit RGB JPEG/PNG composites and real images
are stored as their original bytes; anything that had to be converted is re-encoded as PNG.
Masks are always stored as binary (0/255) single-channel PNGs the size of their composite.

Bad data never stops a preparation: missing, undecodable or truncated files are skipped,
convertible ones (grey, RGBA, palette, 16-bit, CMYK images; masks of another size) are converted.
Every skip and conversion is logged at the end of each split and written as JSON to
``data_dir/ihd/<config>/<version>/preparation_report_<split>.json``.

Either form prepares the data::

    tfds.builder("ihd/le50", data_dir=D).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=RAW))
    jirl.data.ihd_builder(D, config="le50", manual_dir=RAW)
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import io
import json
import os
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image, ImageFile, UnidentifiedImageError

from jirl.data.features import ArrayRecordBuilder, composite_features, encode_image

SUBSETS = ("HAdobe5k", "HCOCO", "HFlickr", "Hday2night")
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".tif", ".tiff")
MASK_EXTENSIONS = (".png", ".PNG", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
REPORT_NAME = "preparation_report_{split}.json"

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download iHarmony4 (https://github.com/bcmi/Image-Harmonization-Dataset-iHarmony4) and extract it
so that the manual directory (`manual_dir`, `data.ihd.manual_dir` in jirl configs) looks like:

  <manual_dir>/
    HAdobe5k/  HCOCO/  HFlickr/  Hday2night/     (any subset may be missing: a partial copy)
      composite_images/   a0001_1_1.jpg ...      composite <a>_<b>_<c>.jpg
      masks/              a0001_1.png ...        its mask <a>_<b>.png
      real_images/        a0001.jpg ...          its real image <a>.jpg
      <subset>_train.txt  <subset>_test.txt      split lists, one composite a line
    IHD_train.txt  IHD_test.txt                  (optional) root split lists

Lines of a per-subset list are composite file names, bare (`a0001_1_1.jpg`) or relative to the
subset (`composite_images/a0001_1_1.jpg`). Lines of the root lists are relative to the root
(`HAdobe5k/composite_images/a0001_1_1.jpg`). A subset's own lists are preferred when both exist;
an image listed twice is used once.
"""


# ------------------------------------------------------------------------------------------------
# Image loading with conversion rules (shared with jirl.data.folder).


class BadImageError(Exception):
    """A file that cannot be used (missing, undecodable, truncated, unsupported)."""


@dataclasses.dataclass
class LoadedImage:
    array: np.ndarray  # uint8 [H, W, 3] (images) or [H, W, 1] in {0, 255} (masks)
    conversions: list[str]
    original: bytes | None = None  # the file's bytes when they can be stored unchanged

    def encoded(self) -> io.BytesIO:
        """The bytes to store: the original file, or a PNG re-encoding."""
        if self.original is not None:
            return io.BytesIO(self.original)
        return encode_image(self.array, "png")


_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _open(path: epath.PathLike) -> tuple[Image.Image, bytes, bool]:
    """Reads and fully decodes ``path``: (image, file bytes, decoded from 16-bit RGB(A))."""
    path = epath.Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise BadImageError("missing file") from e
    except OSError as e:
        raise BadImageError(f"unreadable file ({type(e).__name__}: {e})") from e
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated images would pass")
    try:
        image = Image.open(io.BytesIO(data))
        # PIL reads 16-bit RGB(A) PNGs as 8-bit RGB(A); the raw mode of the tile says so.
        wide = any(";16" in str(getattr(tile, "args", "")) for tile in image.tile) and image.mode in (
            "RGB",
            "RGBA",
        )
        image.load()  # Full decode: truncated files raise here.
    except UnidentifiedImageError as e:
        raise BadImageError("cannot decode (not a recognised image format)") from e
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad data.
        raise BadImageError(f"cannot decode ({type(e).__name__}: {e})") from e
    if image.width < 1 or image.height < 1:
        raise BadImageError(f"empty image ({image.width}x{image.height})")
    return image, data, wide


def _sixteen_to_eight(array: np.ndarray) -> np.ndarray:
    array = np.clip(array.astype(np.int64), 0, 65535)
    return ((array * 255 + 32767) // 65535).astype(np.uint8)


def load_rgb(path: epath.PathLike) -> LoadedImage:
    """An image as uint8 [H, W, 3], converting grey/RGBA/palette/16-bit/CMYK; else BadImageError."""
    image, data, wide = _open(path)
    mode = image.mode
    conversions: list[str] = []
    if mode == "RGB":
        array = np.asarray(image, dtype=np.uint8)
        if wide:
            conversions.append("16-bit RGB->8-bit")
    elif mode in _SIXTEEN_BIT_MODES:
        grey = _sixteen_to_eight(np.asarray(image))
        array = np.repeat(grey[..., None], 3, axis=-1)
        conversions.append(f"16-bit grey ({mode})->8-bit RGB")
    elif mode in ("L", "1", "LA"):
        array = np.asarray(image.convert("L"), dtype=np.uint8)
        array = np.repeat(array[..., None], 3, axis=-1)
        conversions.append(f"{'grey' if mode == 'L' else mode}->RGB")
    elif mode == "RGBA":
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        conversions.append("RGBA->RGB (alpha dropped)" + (" 16-bit->8-bit" if wide else ""))
    elif mode in ("P", "PA"):
        rgba = image.convert("RGBA")
        array = np.asarray(rgba.convert("RGB"), dtype=np.uint8)
        conversions.append("palette->RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"):
        array = np.asarray(image.convert("RGB"), dtype=np.uint8)
        conversions.append(f"{mode}->RGB")
    else:
        raise BadImageError(f"unsupported image mode {mode!r}")
    original = data if not conversions and image.format in ("JPEG", "PNG") else None
    if not conversions and original is None:
        conversions.append(f"{image.format}->PNG")
    return LoadedImage(np.ascontiguousarray(array), conversions, original)


def load_mask(path: epath.PathLike, size: tuple[int, int] | None = None) -> LoadedImage:
    """A mask as uint8 [H, W, 1] in {0, 255}: > 127 of 8 bits (half the maximum of wider types).

    ``size`` (height, width): resize to it with nearest neighbour when the mask differs.
    """
    image, _, wide = _open(path)
    mode = image.mode
    conversions: list[str] = []
    if mode == "1":
        fg = np.asarray(image, dtype=bool)
    elif mode in _SIXTEEN_BIT_MODES:
        fg = np.asarray(image).astype(np.int64) > 32767
        conversions.append(f"16-bit mask ({mode})->8-bit")
    elif mode == "F":
        values = np.asarray(image, dtype=np.float32)
        fg = values > (0.5 if values.max(initial=0.0) <= 1.0 else 127.5)
        conversions.append("float mask->8-bit")
    else:
        if mode == "L":
            grey = np.asarray(image, dtype=np.uint8)
        elif mode in ("LA", "La"):
            grey = np.asarray(image.getchannel(0), dtype=np.uint8)
            conversions.append(f"{mode}->L (alpha dropped)")
        elif mode in ("P", "PA"):
            grey = np.asarray(image.convert("L"), dtype=np.uint8)
            conversions.append("palette->L")
        elif mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
            grey = np.asarray(image.convert("RGB").convert("L"), dtype=np.uint8)
            conversions.append(f"{mode}->L")
        else:
            raise BadImageError(f"unsupported mask mode {mode!r}")
        if wide:
            conversions.append("16-bit->8-bit")
        fg = grey > 127
        values = np.unique(grey)
        if not np.isin(values, (0, 255)).all():
            conversions.append(f"binarized at >127 ({len(values)} grey levels)")
    mask = np.where(fg, np.uint8(255), np.uint8(0))
    if size is not None and mask.shape != tuple(size):
        height, width = size
        conversions.append(
            f"mask resized {mask.shape[1]}x{mask.shape[0]}->{width}x{height} (nearest neighbour)"
        )
        mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))
    return LoadedImage(np.ascontiguousarray(mask[..., None]), conversions, None)


def find_with_extensions(directory: epath.Path, stem: str, preferred: str, extensions) -> epath.Path:
    """``directory/stem+preferred`` if it exists, else the first ``stem+ext`` that exists."""
    first = directory / f"{stem}{preferred}"
    if first.exists():
        return first
    for ext in extensions:
        candidate = directory / f"{stem}{ext}"
        if candidate.exists():
            return candidate
    return first


def related_stems(composite_name: str) -> tuple[str, str]:
    """Composite ``a_b_c.jpg`` -> (mask stem ``a_b``, real stem ``a``)."""
    stem = os.path.splitext(composite_name)[0]
    parts = stem.rsplit("_", 2)
    if len(parts) != 3 or not all(parts):
        raise BadImageError(f"composite name {composite_name!r} does not follow <a>_<b>_<c>.<ext>")
    return f"{parts[0]}_{parts[1]}", parts[0]


@dataclasses.dataclass
class Outcome:
    """What became of one listed composite."""

    key: str
    example: dict | None = None
    mask_fraction: float | None = None
    skipped: list[dict] = dataclasses.field(default_factory=list)  # {"file", "reason"}
    converted: list[dict] = dataclasses.field(default_factory=list)  # {"file", "conversions"}
    filtered: bool = False  # left out by the config's mask-fraction rule


def load_triplet(
    composite_path: epath.Path,
    mask_path: epath.Path,
    real_path: epath.Path | None,
    *,
    key: str,
    subset: str,
    name: str,
    display_root: epath.Path | None = None,
) -> Outcome:
    """Loads composite, mask (resized to the composite) and real (None: the composite)."""

    def shown(path: epath.Path) -> str:
        if display_root is not None:
            try:
                return os.path.relpath(os.fspath(path), os.fspath(display_root))
            except ValueError:
                pass
        return os.fspath(path)

    outcome = Outcome(key=key)
    loaded: dict[str, LoadedImage] = {}
    paths = {"composite": composite_path, "real": real_path}
    for role in ("composite", "real"):
        if paths[role] is None:
            continue
        try:
            loaded[role] = load_rgb(paths[role])
        except BadImageError as e:
            outcome.skipped.append({"file": shown(paths[role]), "reason": f"{role}: {e}"})
    size = loaded["composite"].array.shape[:2] if "composite" in loaded else None
    try:
        loaded["mask"] = load_mask(mask_path, size)
    except BadImageError as e:
        outcome.skipped.append({"file": shown(mask_path), "reason": f"mask: {e}"})
    if "real" in loaded and size is not None and loaded["real"].array.shape[:2] != size:
        real_hw = loaded["real"].array.shape[:2]
        outcome.skipped.append(
            {
                "file": shown(real_path),
                "reason": f"real: size {real_hw[1]}x{real_hw[0]} differs from the composite's "
                f"{size[1]}x{size[0]}",
            }
        )
    if outcome.skipped:
        return outcome
    if real_path is None:
        loaded["real"] = loaded["composite"]
    mask = loaded["mask"].array
    outcome.mask_fraction = float(np.count_nonzero(mask) / mask.size)
    for role, path in (("composite", composite_path), ("mask", mask_path), ("real", real_path)):
        if path is not None and loaded[role].conversions:
            outcome.converted.append({"file": shown(path), "conversions": loaded[role].conversions})
    outcome.example = {
        "composite": loaded["composite"],
        "mask": loaded["mask"],
        "real": loaded["real"],
        "subset": subset,
        "name": name,
        "mask_fraction": np.float32(outcome.mask_fraction),
    }
    return outcome


# ------------------------------------------------------------------------------------------------
# Split lists.


@dataclasses.dataclass
class SplitEntries:
    entries: list[tuple[str, str]]  # (subset, composite file name), listed order, no duplicates
    lists_used: dict[str, str]  # subset -> list file (relative to the root)
    bad_lines: list[dict]  # {"file", "reason"}
    duplicates: int


def _read_lines(path: epath.Path) -> list[str]:
    lines = []
    for raw in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        line = raw.strip().replace("\\", "/")
        if line and not line.startswith("#"):
            lines.append(line[2:] if line.startswith("./") else line)
    return lines


def _entry_name(line: str, subset: str | None) -> tuple[str | None, str]:
    """(subset or None, composite file name) of a list line."""
    parts = [p for p in line.split("/") if p]
    found = None
    if parts and parts[0] in SUBSETS:
        found, parts = parts[0], parts[1:]
    elif subset is not None and len(parts) > 1 and parts[0] == subset:
        found, parts = subset, parts[1:]
    if not parts:
        return found, ""
    return found, parts[-1]


def split_lists(root: epath.Path, split: str, subsets: Sequence[str]) -> SplitEntries:
    """The composites listed for ``split`` in ``subsets`` (per-subset lists first, else root)."""
    root_entries: dict[str, list[str]] = collections.defaultdict(list)
    bad_lines: list[dict] = []
    root_list = root / f"IHD_{split}.txt"
    if root_list.exists():
        for number, line in enumerate(_read_lines(root_list), 1):
            found, name = _entry_name(line, None)
            if found is None or not name:
                bad_lines.append(
                    {"file": f"{root_list.name}:{number}", "reason": f"list entry {line!r} names no subset"}
                )
            else:
                root_entries[found].append(name)
    entries: list[tuple[str, str]] = []
    lists_used: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()
    duplicates = 0
    for subset in subsets:
        own = root / subset / f"{subset}_{split}.txt"
        names: list[str] = []
        if own.exists():
            lists_used[subset] = f"{subset}/{own.name}"
            for number, line in enumerate(_read_lines(own), 1):
                found, name = _entry_name(line, subset)
                if (found not in (None, subset)) or not name:
                    bad_lines.append(
                        {
                            "file": f"{subset}/{own.name}:{number}",
                            "reason": f"list entry {line!r} is not in {subset}",
                        }
                    )
                else:
                    names.append(name)
        elif subset in root_entries:
            lists_used[subset] = root_list.name
            names = root_entries[subset]
        for name in names:
            if (subset, name) in seen:
                duplicates += 1
                continue
            seen.add((subset, name))
            entries.append((subset, name))
    return SplitEntries(entries, lists_used, bad_lines, duplicates)


# ------------------------------------------------------------------------------------------------
# The builder.


@dataclasses.dataclass(kw_only=True)
class IHDConfig(tfds.core.BuilderConfig):
    subsets: tuple[str, ...] = SUBSETS
    max_mask_fraction: float | None = 0.5  # None: keep every mask size


LE50 = IHDConfig(
    name="le50",
    description="All four sub-datasets, examples whose mask covers <= 50 % of the image "
    "(DIRL's split: 64,255 train / 7,237 test).",
)
ALL = IHDConfig(
    name="all",
    description="All four sub-datasets, every mask size.",
    max_mask_fraction=None,
)
SUBSET_CONFIGS = [
    IHDConfig(
        name=subset,
        description=f"{subset} only, le50-filtered (masks covering <= 50 % of the image).",
        subsets=(subset,),
    )
    for subset in SUBSETS
]


class IHarmony4(ArrayRecordBuilder):
    """iHarmony4 composites, masks and real images (manual download)."""

    name = "ihd"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [LE50, ALL, *SUBSET_CONFIGS]
    DEFAULT_BUILDER_CONFIG_NAME = "le50"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    # Sizes of the full dataset's le50 split; checked when all four subsets and lists are present.
    EXPECTED_LE50_TRAIN = 64255
    EXPECTED_LE50_TEST = 7237
    # Threads decoding images during preparation (PIL releases the GIL while decoding).
    NUM_THREADS = min(8, os.cpu_count() or 1)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="iHarmony4 (HAdobe5k, HCOCO, HFlickr, Hday2night) for inharmonious "
            "region localization: composite, binary mask of the inharmonious region, real image.",
            features=composite_features("jpeg"),
            supervised_keys=None,
            disable_shuffling=True,  # Records in list order; the input pipeline shuffles.
            homepage="https://github.com/bcmi/Image-Harmonization-Dataset-iHarmony4",
        )

    def _split_generators(self, dl_manager):
        root = epath.Path(dl_manager.manual_dir)
        cfg = self.builder_config
        present = [s for s in cfg.subsets if (root / s).is_dir()]
        if not present:
            raise FileNotFoundError(
                f"no iHarmony4 sub-dataset directory ({', '.join(cfg.subsets)}) in {root}.\n"
                f"{MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        lists = {split: split_lists(root, split, cfg.subsets) for split in SPLITS}
        for split, found in lists.items():
            if not found.entries:
                raise FileNotFoundError(
                    f"no {split} list for {', '.join(cfg.subsets)} in {root} (looked for "
                    f"<subset>/<subset>_{split}.txt and IHD_{split}.txt).\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
                )
        full = (
            cfg.name == "le50"
            and tuple(cfg.subsets) == SUBSETS
            and len(present) == len(SUBSETS)
            and all(set(lists[split].lists_used) == set(SUBSETS) for split in SPLITS)
        )
        expected = {"train": self.EXPECTED_LE50_TRAIN, "test": self.EXPECTED_LE50_TEST}
        return {
            split: self._generate_examples(root, split, lists[split], expected[split] if full else None)
            for split in SPLITS
        }

    def _generate_examples(self, root: epath.Path, split: str, lists: SplitEntries, expected):
        cfg = self.builder_config
        report = {
            "dataset": f"ihd/{cfg.name}/{self.VERSION}",
            "split": split,
            "manual_dir": os.fspath(root),
            "lists": lists.lists_used,
            "num_listed": len(lists.entries),
            "duplicate_list_entries": lists.duplicates,
            "max_mask_fraction": cfg.max_mask_fraction,
            "num_examples": 0,
            "num_filtered_by_mask_fraction": 0,
            "skipped": list(lists.bad_lines),
            "converted": [],
        }

        def process(entry: tuple[str, str]) -> Outcome:
            subset, name = entry
            key = f"{subset}/{name}"
            try:
                mask_stem, real_stem = related_stems(name)
            except BadImageError as e:
                return Outcome(
                    key=key, skipped=[{"file": f"{subset}/composite_images/{name}", "reason": str(e)}]
                )
            base = root / subset
            outcome = load_triplet(
                base / "composite_images" / name,
                find_with_extensions(base / "masks", mask_stem, ".png", MASK_EXTENSIONS),
                find_with_extensions(base / "real_images", real_stem, ".jpg", IMAGE_EXTENSIONS),
                key=key,
                subset=subset,
                name=name,
                display_root=root,
            )
            if outcome.example is not None:
                if cfg.max_mask_fraction is not None and outcome.mask_fraction > cfg.max_mask_fraction:
                    outcome.example, outcome.filtered = None, True
                else:
                    # Encode here, on the worker thread; keep only bytes (decoded arrays are big).
                    for role in ("composite", "mask", "real"):
                        outcome.example[role] = outcome.example[role].encoded()
            return outcome

        for outcome in _map_ordered(process, lists.entries, self.NUM_THREADS):
            if outcome.filtered:
                report["num_filtered_by_mask_fraction"] += 1
                continue
            if outcome.example is None:
                for item in outcome.skipped:
                    report["skipped"].append({"example": outcome.key, **item})
                continue
            for item in outcome.converted:
                report["converted"].append({"example": outcome.key, **item})
            report["num_examples"] += 1
            yield outcome.key, outcome.example

        num_skipped_examples = len({item.get("example") for item in report["skipped"] if "example" in item})
        report["num_skipped_examples"] = num_skipped_examples
        _write_report(epath.Path(self.data_dir) / REPORT_NAME.format(split=split), report)
        _log_report(report)
        if expected is not None:
            kept = report["num_examples"]
            # Skipped (bad) files may explain a shortfall; nothing explains a surplus.
            if not kept <= expected <= kept + num_skipped_examples:
                raise ValueError(
                    f"iHarmony4 le50 {split}: {kept} examples (+{num_skipped_examples} skipped as "
                    f"unreadable), but the full dataset has {expected}. All four sub-datasets and "
                    f"their lists are present, so this is not a partial copy: check the split lists "
                    f"({lists.lists_used}) and the extracted files in {root}."
                )
            if kept != expected:
                logging.warning(
                    "iHarmony4 le50 %s: %d examples instead of %d; %d listed examples were skipped "
                    "as unreadable (see the report).",
                    split,
                    kept,
                    expected,
                    num_skipped_examples,
                )


def _map_ordered(fn, items: Sequence, num_threads: int) -> Iterable:
    """``map(fn, items)`` on a thread pool, in order, with a bounded number of results in flight."""
    if num_threads <= 1:
        yield from map(fn, items)
        return
    window = 2 * num_threads
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        pending: collections.deque = collections.deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _write_report(path: epath.Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, sort_keys=False))


def _log_report(report: dict) -> None:
    lines = [
        f"{report['dataset']} {report['split']}: {report['num_examples']} examples written, "
        f"{report['num_filtered_by_mask_fraction']} filtered by mask fraction, "
        f"{len(report['skipped'])} files skipped, {len(report['converted'])} files converted."
    ]
    lines += [f"  skipped {item['file']}: {item['reason']}" for item in report["skipped"]]
    lines += [f"  converted {item['file']}: {'; '.join(item['conversions'])}" for item in report["converted"]]
    if report["skipped"] or report["converted"]:
        logging.warning("\n".join(lines))
    else:
        logging.info(lines[0])


def ihd_builder(
    data_dir: str,
    config: str = "le50",
    *,
    manual_dir: str | None = None,
    prepare: bool = True,
) -> IHarmony4:
    """The ``ihd/<config>`` builder; prepares it from ``manual_dir`` unless already prepared."""
    config = config or "le50"
    names = [c.name for c in IHarmony4.BUILDER_CONFIGS]
    if config not in names:
        raise ValueError(f"data.ihd.config={config!r} is unknown; use one of {', '.join(names)}")
    builder = IHarmony4(config=config, data_dir=data_dir, file_format="array_record")
    if prepare and not builder.is_prepared():
        if not manual_dir:
            raise FileNotFoundError(
                f"iHarmony4 (ihd/{config}) is not prepared in {data_dir} and data.ihd.manual_dir is "
                f"empty: download iHarmony4 and set data.ihd.manual_dir to the extracted directory "
                f"(it is read once, to prepare the data).\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )
        manual = epath.Path(os.path.expanduser(str(manual_dir)))
        if not manual.is_dir():
            raise FileNotFoundError(f"data.ihd.manual_dir={manual_dir!r} is not a directory")
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual))
        )
    return builder

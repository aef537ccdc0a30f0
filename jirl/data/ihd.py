"""TFDS builder ``ihd``: the iHarmony4 dataset (manual download).

Prepared once into ``data_dir/ihd/<config>/<version>`` as ArrayRecord files without TensorFlow:
images are handed to TFDS as encoded bytes. Clean, upright 8-bit RGB JPEG/PNG composites and real
images are stored as their original bytes; anything that had to be converted (including an applied
EXIF orientation) is re-encoded as PNG. Masks are always stored as binary (0/255) single-channel
PNGs the size of their composite. Files are read with the rules of ``jirl.data.images``.

Which composites make a split (``jirl.data.ihd_lists``): for ``le50`` and the per-subset configs,
the root ``le50_train.txt`` / ``le50_test.txt`` of the official DIRL/MadisNet repositories when
present, verbatim and in order; otherwise the per-subset (or root ``IHD_*``) lists filtered to masks
covering <= 50 % of the image. ``all`` uses the per-subset lists with every mask size.

Bad data never stops a preparation: missing, undecodable or truncated files are skipped,
convertible ones are converted. Neither does a copy whose size differs from the full dataset's
(partial, trimmed or customised): that is a warning, unless ``strict_counts=True``. Every skip,
conversion and the count check are written to
``data_dir/ihd/<config>/<version>/preparation_report_<split>.json`` (the log shows the first few);
``record_index_<split>.json`` beside it lists the (subset, name) of every record in order.

Either form prepares the data::

    tfds.builder("ihd/le50", data_dir=D).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=RAW))
    jirl.data.ihd_builder(D, config="le50", manual_dir=RAW)
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from jirl import files
from jirl.data.composites import Outcome, load_triplet, related_stems
from jirl.data.features import ArrayRecordBuilder, composite_features
from jirl.data.ihd_lists import LE50_LIST, SPLITS, SUBSETS, SplitEntries, le50_list_path, split_lists
from jirl.data.images import IMAGE_EXTENSIONS, MASK_EXTENSIONS, BadImageError, find_with_extensions
from jirl.data.record_index import write_record_index

REPORT_NAME = "preparation_report_{split}.json"
LOG_LIMIT = 20  # skipped / converted files named in the log; the report names all

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download iHarmony4 (https://github.com/bcmi/Image-Harmonization-Dataset-iHarmony4) and extract it
so that the manual directory (`manual_dir`, `data.ihd.manual_dir` in jirl configs) looks like:

  <manual_dir>/
    HAdobe5k/  HCOCO/  HFlickr/  Hday2night/     (any subset may be missing: a partial copy)
      composite_images/   a0001_1_1.jpg ...      composite <a>_<b>_<c>.jpg
      masks/              a0001_1.png ...        its mask <a>_<b>.png
      real_images/        a0001.jpg ...          its real image <a>.jpg
      <subset>_train.txt  <subset>_test.txt      split lists, one composite a line
    le50_train.txt  le50_test.txt                (recommended) the le50 split of the official
                                                 DIRL/MadisNet repositories
    IHD_train.txt  IHD_test.txt                  (optional) root split lists

With le50_train.txt / le50_test.txt (lines relative to the root, e.g.
`HFlickr/composite_images/f1000_1_1.jpg`) the le50 and per-subset configs use them as they are.
Without them: lines of a per-subset list are composite file names, bare (`a0001_1_1.jpg`) or
relative to the subset (`composite_images/a0001_1_1.jpg`); lines of the IHD root lists are relative
to the root. A subset's own lists are preferred to the IHD lists, and masks covering more than
50 % of the image are left out. An image listed twice is used once.
"""


@dataclasses.dataclass(kw_only=True)
class IHDConfig(tfds.core.BuilderConfig):
    subsets: tuple[str, ...] = SUBSETS
    max_mask_fraction: float | None = 0.5  # None: every mask size (and no le50 lists)


LE50 = IHDConfig(
    name="le50",
    description="All four sub-datasets, the le50 split: the root le50_train.txt / le50_test.txt when "
    "present, else examples whose mask covers <= 50 % of the image (DIRL's split: 64,255 train / "
    "7,237 test).",
)
ALL = IHDConfig(
    name="all",
    description="All four sub-datasets, every mask size (ignores le50 lists).",
    max_mask_fraction=None,
)
SUBSET_CONFIGS = [
    IHDConfig(
        name=subset,
        description=f"{subset} only, le50: its lines of the root le50 lists when present, else masks "
        "covering <= 50 % of the image.",
        subsets=(subset,),
    )
    for subset in SUBSETS
]


class IHarmony4(ArrayRecordBuilder):
    """iHarmony4 composites, masks and real images (manual download).

    ``strict_counts=True``: refuse (raise) when all four sub-datasets are present but the le50
    split's size differs from the full dataset's (default: a warning and a report field).
    """

    name = "ihd"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "Root le50_train.txt / le50_test.txt are the le50 split (verbatim, in order) when "
        "present; EXIF orientation applied to composites, masks and real images; a size mismatch "
        "with the full dataset warns (strict_counts=True raises); record_index_<split>.json.",
    }
    BUILDER_CONFIGS = [LE50, ALL, *SUBSET_CONFIGS]
    DEFAULT_BUILDER_CONFIG_NAME = "le50"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    # Sizes of the full dataset's le50 split; checked (config le50) when all four subsets are present.
    EXPECTED_LE50_TRAIN = 64255
    EXPECTED_LE50_TEST = 7237
    # Threads decoding images during preparation (PIL releases the GIL while decoding).
    NUM_THREADS = min(8, os.cpu_count() or 1)

    def __init__(self, *, strict_counts: bool = False, **kwargs):
        if not isinstance(strict_counts, bool):
            raise TypeError(f"strict_counts must be a bool, got {strict_counts!r}")
        super().__init__(**kwargs)
        self.strict_counts = strict_counts
        self._original_state["strict_counts"] = strict_counts  # Kept when pickled.
        self._final_data_dir = self.data_dir  # data_dir points to a temporary one while preparing.

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
        use_le50 = cfg.max_mask_fraction is not None
        if use_le50:
            found = [split for split in SPLITS if le50_list_path(root, split).exists()]
            if len(found) == 1:
                missing = LE50_LIST.format(split=next(s for s in SPLITS if s not in found))
                logging.warning(
                    "iHarmony4: %s is in %s but %s is not; the %s split falls back to the per-subset "
                    "lists filtered to masks <= 50 %%.",
                    LE50_LIST.format(split=found[0]),
                    root,
                    missing,
                    "test" if found == ["train"] else "train",
                )
        lists = {split: split_lists(root, split, cfg.subsets, use_le50=use_le50) for split in SPLITS}
        for split, listed in lists.items():
            if not listed.entries:
                raise FileNotFoundError(
                    f"no {split} list entries for {', '.join(cfg.subsets)} in {root} (looked for "
                    f"{'le50_' + split + '.txt, ' if use_le50 else ''}<subset>/<subset>_{split}.txt and "
                    f"IHD_{split}.txt).\n{MANUAL_DOWNLOAD_INSTRUCTIONS}"
                )
        full = cfg.name == "le50" and len(present) == len(SUBSETS)
        expected = {"train": self.EXPECTED_LE50_TRAIN, "test": self.EXPECTED_LE50_TEST}
        return {
            split: self._generate_examples(
                root, split, lists[split], present, expected[split] if full else None
            )
            for split in SPLITS
        }

    def _policy(self, lists: SplitEntries) -> str:
        if lists.authoritative:
            return "root le50 lists (authoritative)"
        if self.builder_config.max_mask_fraction is None:
            return "per-subset / IHD lists, every mask size"
        return f"per-subset / IHD lists, masks covering <= {self.builder_config.max_mask_fraction:.0%}"

    def _generate_examples(
        self, root: epath.Path, split: str, lists: SplitEntries, present: Sequence[str], expected: int | None
    ):
        cfg = self.builder_config
        max_fraction = None if lists.authoritative else cfg.max_mask_fraction
        absent = collections.Counter(subset for subset, _ in lists.entries if subset not in present)
        report = {
            "dataset": f"ihd/{cfg.name}/{self.VERSION}",
            "split": split,
            "manual_dir": os.fspath(root),
            "lists": lists.lists_used,
            "list_policy": self._policy(lists),
            "num_listed": len(lists.entries),
            "duplicate_list_entries": lists.duplicates,
            "max_mask_fraction": max_fraction,
            "missing_subsets": dict(absent),  # subset directory absent -> composites listed in it
            "num_examples": 0,
            "num_filtered_by_mask_fraction": 0,
            "num_skipped_examples": 0,
            "count_check": None,
            "skipped": list(lists.bad_lines),
            "converted": [],
        }
        entries = [entry for entry in lists.entries if entry[0] in present]
        keys: list[tuple[str, str]] = []
        skipped_examples = 0
        process = _entry_loader(root, max_fraction)
        for outcome in _map_ordered(process, entries, self.NUM_THREADS):
            if outcome.filtered:
                report["num_filtered_by_mask_fraction"] += 1
                continue
            if outcome.example is None:
                skipped_examples += 1
                report["skipped"] += [{"example": outcome.key, **item} for item in outcome.skipped]
                continue
            report["converted"] += [{"example": outcome.key, **item} for item in outcome.converted]
            keys.append((outcome.example["subset"], outcome.example["name"]))
            yield outcome.key, outcome.example
        report["num_examples"] = len(keys)
        report["num_skipped_examples"] = skipped_examples
        if not keys:  # TFDS cannot write an empty split: say why there is nothing.
            problems = "; ".join(f"{item['file']}: {item['reason']}" for item in report["skipped"][:3])
            raise ValueError(
                f"iHarmony4 {cfg.name} {split}: none of the {len(lists.entries)} listed composites is "
                f"usable ({skipped_examples} missing or unreadable, "
                f"{report['num_filtered_by_mask_fraction']} filtered by mask fraction, sub-datasets "
                f"absent: {dict(absent) or 'none'}; e.g. {problems or 'no entries'}). Check the extracted "
                f"files in {root} and the lists ({lists.lists_used}); a trimmed copy needs some "
                f"{split} images of the listed ones."
            )
        report["count_check"] = _count_check(expected, len(keys), skipped_examples, present)
        report_path = epath.Path(self._final_data_dir) / REPORT_NAME.format(split=split)
        files.write_json(epath.Path(self.data_dir) / REPORT_NAME.format(split=split), report, indent=1)
        write_record_index(self.data_dir, split, keys)
        _log_report(report, report_path)
        if report["count_check"]["status"] == "mismatch":
            message = _mismatch_message(report, root, report_path, strict=self.strict_counts)
            if self.strict_counts:
                raise ValueError(message)
            logging.warning(message)


def _entry_loader(root: epath.Path, max_fraction: float | None) -> Callable[[tuple[str, str]], Outcome]:
    """Loads one listed (subset, name) into an Outcome with encoded images (runs on worker threads)."""

    def process(entry: tuple[str, str]) -> Outcome:
        subset, name = entry
        key = f"{subset}/{name}"
        base = root / subset
        composite = base / "composite_images" / name
        if not composite.exists():  # The common case of a trimmed copy: no other lookups.
            return Outcome(
                key=key,
                skipped=[{"file": f"{subset}/composite_images/{name}", "reason": "composite: missing file"}],
            )
        try:
            mask_stem, real_stem = related_stems(name)
        except BadImageError as e:
            return Outcome(key=key, skipped=[{"file": f"{subset}/composite_images/{name}", "reason": str(e)}])
        outcome = load_triplet(
            composite,
            find_with_extensions(base / "masks", mask_stem, ".png", MASK_EXTENSIONS),
            find_with_extensions(base / "real_images", real_stem, ".jpg", IMAGE_EXTENSIONS),
            key=key,
            subset=subset,
            name=name,
            display_root=root,
        )
        if outcome.example is not None:
            if max_fraction is not None and outcome.mask_fraction > max_fraction:
                outcome.example, outcome.filtered = None, True
            else:
                # Encode here, on the worker thread; keep only bytes (decoded arrays are big).
                for role in ("composite", "mask", "real"):
                    outcome.example[role] = outcome.example[role].encoded()
        return outcome

    return process


def _count_check(expected: int | None, kept: int, skipped: int, present: Sequence[str]) -> dict:
    if expected is None:
        missing = [s for s in SUBSETS if s not in present]
        reason = f"partial copy (no {', '.join(missing)})" if missing else "only config le50 is checked"
        return {"expected": None, "kept": kept, "status": "not checked", "reason": reason}
    return {
        "expected": expected,
        "kept": kept,
        "skipped_examples": skipped,
        "status": "match" if kept == expected else "mismatch",
    }


def _mismatch_message(report: dict, root: epath.Path, report_path: epath.Path, *, strict: bool) -> str:
    check = report["count_check"]
    kept, expected = check["kept"], check["expected"]
    action = (
        "strict_counts=True (data.ihd.strict_counts) refuses it: fix the copy or drop strict_counts to "
        "prepare it anyway."
        if strict
        else "It was prepared as it is; results on it are not comparable with published iHarmony4 "
        "numbers. Pass strict_counts=True (data.ihd.strict_counts=True) to refuse such a copy."
    )
    return (
        f"iHarmony4 le50 {report['split']}: {kept:,} examples, but the full dataset's le50 split has "
        f"{expected:,}. All four sub-datasets are in {root}, yet this copy is partial, trimmed or "
        f"customised: {check['skipped_examples']:,} listed composites were missing or unreadable and "
        f"{report['num_filtered_by_mask_fraction']:,} were filtered by mask fraction (lists: "
        f"{report['lists']}, {report['list_policy']}). If you expected the full dataset, check the "
        f"extracted files and the lists; the report {report_path} names every skipped file. {action}"
    )


def _map_ordered(fn: Callable, items: Sequence, num_threads: int) -> Iterable:
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


def _log_report(report: dict, report_path: epath.Path) -> None:
    """One summary line, then at most LOG_LIMIT skipped and LOG_LIMIT converted files."""
    skipped, converted = report["skipped"], report["converted"]
    summary = (
        f"{report['dataset']} {report['split']}: {report['num_examples']} examples written "
        f"({report['list_policy']}), {report['num_filtered_by_mask_fraction']} filtered by mask fraction, "
        f"{len(skipped)} files skipped, {len(converted)} files converted"
    )
    if report["missing_subsets"]:
        summary += f"; sub-datasets absent: {report['missing_subsets']} (subset: composites listed)"
    lines = [summary + "."]
    for items, verb, describe in (
        (skipped, "skipped", lambda item: item["reason"]),
        (converted, "converted", lambda item: "; ".join(item["conversions"])),
    ):
        lines += [f"  {verb} {item['file']}: {describe(item)}" for item in items[:LOG_LIMIT]]
        if len(items) > LOG_LIMIT:
            lines.append(f"  ... and {len(items) - LOG_LIMIT:,} more {verb} files: see {report_path}")
    if skipped or converted:
        logging.warning("\n".join(lines))
    else:
        logging.info(lines[0])


def ihd_builder(
    data_dir: str,
    config: str = "le50",
    *,
    manual_dir: str | None = None,
    prepare: bool = True,
    strict_counts: bool = False,
) -> IHarmony4:
    """The ``ihd/<config>`` builder; prepares it from ``manual_dir`` unless already prepared.

    ``strict_counts`` applies to a preparation (see ``IHarmony4``); prepared data is used as it is.
    """
    names = [c.name for c in IHarmony4.BUILDER_CONFIGS]
    if config not in names:
        raise ValueError(f"data.ihd.config={config!r} is unknown; use one of {', '.join(names)}")
    builder = IHarmony4(
        config=config, data_dir=data_dir, file_format="array_record", strict_counts=strict_counts
    )
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

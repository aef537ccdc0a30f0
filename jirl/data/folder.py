"""A user's own folder of composites and masks as a random-access source (``data.source="folder"``).

Two layouts are recognised:

* iHarmony4 naming: ``<dir>/composite_images/a_b_c.jpg``, ``<dir>/masks/a_b.png`` and optionally
  ``<dir>/real_images/a.jpg``;
* flat: ``<dir>/name.jpg`` with ``<dir>/name_mask.png`` and optionally ``<dir>/name_real.jpg``.

Without a real image the composite stands in for it. Records have the keys of the TFDS data
sources (``composite``/``real`` uint8 [H, W, 3], ``mask`` uint8 [H, W, 1] in {0, 255}, ``subset``
(the folder's name), ``name`` (the composite's file name), ``mask_fraction``) and go through the
same transforms. Images are decoded lazily under the rules of ``jirl.data.images`` (EXIF
orientation applied, grey/RGBA/16-bit converted); every file is checked once at index time and
unusable examples are left out with a warning that lists them.

A validation split is carved from a folder like from any source (``jirl.data.splits``): composites
of one real image (iHarmony naming) stay together; in the flat layout every composite has its own.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
from absl import logging
from etils import epath

from jirl.data.composites import load_triplet, real_image_key, related_stems
from jirl.data.images import (
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    BadImageError,
    find_with_extensions,
    is_image_file,
)


@dataclasses.dataclass(frozen=True)
class _Entry:
    name: str
    composite: str
    mask: str
    real: str | None


def _ihd_entries(root: epath.Path, problems: list[str]) -> list[_Entry]:
    entries = []
    real_dir = root / "real_images"
    for path in sorted(p for p in (root / "composite_images").iterdir() if is_image_file(p)):
        try:
            mask_stem, real_stem = related_stems(path.name)
        except BadImageError as e:
            problems.append(f"{path}: {e}")
            continue
        mask = find_with_extensions(root / "masks", mask_stem, ".png", MASK_EXTENSIONS)
        real = (
            find_with_extensions(real_dir, real_stem, ".jpg", IMAGE_EXTENSIONS) if real_dir.is_dir() else None
        )
        entries.append(
            _Entry(
                path.name,
                os.fspath(path),
                os.fspath(mask),
                os.fspath(real) if real and real.exists() else None,
            )
        )
    return entries


def _flat_entries(root: epath.Path, problems: list[str]) -> list[_Entry]:
    files = sorted(p for p in root.iterdir() if is_image_file(p))
    stems = {p.stem for p in files}
    entries = []
    for path in files:
        stem = path.stem
        if stem.endswith(("_mask", "_real")) and stem[:-5] in stems:
            continue
        mask = find_with_extensions(root, f"{stem}_mask", ".png", MASK_EXTENSIONS)
        if not mask.exists():
            problems.append(f"{path}: no mask {stem}_mask.png")
            continue
        real = find_with_extensions(root, f"{stem}_real", path.suffix, IMAGE_EXTENSIONS)
        entries.append(
            _Entry(path.name, os.fspath(path), os.fspath(mask), os.fspath(real) if real.exists() else None)
        )
    return entries


_LOG_LIMIT = 20


def _capped(lines: list[str]) -> str:
    """The first _LOG_LIMIT lines (FolderSource.skipped / .converted keep them all)."""
    shown = lines[:_LOG_LIMIT]
    if len(lines) > _LOG_LIMIT:
        shown.append(f"... and {len(lines) - _LOG_LIMIT} more")
    return "\n  ".join(shown)


class FolderSource(Sequence):
    """Random-access examples of one folder (see the module doc)."""

    def __init__(self, directory: str, *, subset: str | None = None):
        root = epath.Path(os.path.expanduser(str(directory)))
        if not root.is_dir():
            raise FileNotFoundError(f"data folder {directory!r} is not a directory")
        self.directory = os.fspath(root)
        self.subset = subset or root.name
        self.cache_key: tuple = (self.directory, id(self))  # folder_source: (directory, mtimes)
        problems: list[str] = []
        if (root / "composite_images").is_dir():
            self.layout = "ihd"
            candidates = _ihd_entries(root, problems)
        else:
            self.layout = "flat"
            candidates = _flat_entries(root, problems)
        self._entries: list[_Entry] = []
        self._fractions: list[float] = []
        converted: list[str] = []
        for entry in candidates:
            outcome = self._load(entry)
            if outcome.example is None:
                problems += [f"{item['file']}: {item['reason']}" for item in outcome.skipped]
                continue
            converted += [f"{item['file']}: {'; '.join(item['conversions'])}" for item in outcome.converted]
            self._entries.append(entry)
            self._fractions.append(outcome.mask_fraction)
        if problems:
            logging.warning(
                "data folder %s: skipped %d unusable file(s):\n  %s",
                self.directory,
                len(problems),
                _capped(problems),
            )
        if converted:
            logging.info("data folder %s: converted on load:\n  %s", self.directory, _capped(converted))
        self.skipped = problems
        self.converted = converted
        if not self._entries:
            raise ValueError(
                f"data folder {self.directory} has no usable composite/mask pairs (layout "
                f"{self.layout!r}; expected composite_images/ + masks/ [+ real_images/], or "
                f"name.jpg + name_mask.png [+ name_real.jpg]); problems: {problems or 'no images'}"
            )

    def _load(self, entry: _Entry):
        return load_triplet(
            epath.Path(entry.composite),
            epath.Path(entry.mask),
            epath.Path(entry.real) if entry.real else None,
            key=entry.name,
            subset=self.subset,
            name=entry.name,
        )

    @property
    def without_real(self) -> list[str]:
        """The examples that have no real image (the composite stands in for it)."""
        return [entry.name for entry in self._entries if entry.real is None]

    def record_keys(self) -> list[tuple[str, str]]:
        """(subset, name) of every example, in order (no decoding)."""
        return [(self.subset, entry.name) for entry in self._entries]

    def group_keys(self) -> list[str]:
        """The real image of every example: iHarmony naming groups by ``a``; flat names are their own."""
        if self.layout == "ihd":
            return [real_image_key(self.subset, entry.name) for entry in self._entries]
        return [f"{self.subset}/{entry.name}" for entry in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        outcome = self._load(self._entries[index])
        if outcome.example is None:
            raise OSError(
                f"data folder example {self._entries[index].name} became unreadable: {outcome.skipped}"
            )
        ex = outcome.example
        return {
            "composite": ex["composite"].array,
            "mask": ex["mask"].array,
            "real": ex["real"].array,
            "subset": ex["subset"],
            "name": ex["name"],
            "mask_fraction": np.float32(ex["mask_fraction"]),
        }

    def __repr__(self) -> str:
        return f"FolderSource({self.directory!r}, {len(self)} examples, layout={self.layout!r})"


_CACHE: dict[tuple, FolderSource] = {}


def _signature(root: str) -> tuple:
    """Modification times of the folder and its sub-folders (a changed folder is re-indexed)."""
    sig = []
    for path in (root, *(os.path.join(root, d) for d in ("composite_images", "masks", "real_images"))):
        try:
            sig.append(os.stat(path).st_mtime_ns)
        except OSError:
            sig.append(None)
    return tuple(sig)


def folder_source(directory: str) -> FolderSource:
    """``FolderSource(directory)``, indexed once per unchanged folder."""
    root = os.path.abspath(os.path.expanduser(str(directory)))
    key = (root, _signature(root))
    source = _CACHE.get(key)
    if source is None:
        source = FolderSource(root)
        source.cache_key = key
        _CACHE[key] = source
    return source

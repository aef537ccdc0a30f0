"""iHarmony4 split lists: which composites make up a split.

Three kinds of list files may sit in the extracted dataset (``root``):

* ``le50_train.txt`` / ``le50_test.txt`` at the root (shipped by the official DIRL and MadisNet
  repositories, 64,255 / 7,237 lines, paths relative to the root): the le50 split itself. When
  ``use_le50`` is set and the split's file exists it is used verbatim, in its order;
* ``<subset>/<subset>_{train,test}.txt``: one composite a line, bare or ``composite_images/...``;
* ``IHD_{train,test}.txt`` at the root: paths relative to the root.

Without an le50 list a subset's own list is preferred over the root IHD list. An image listed twice
is used once.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

from etils import epath

SUBSETS = ("HAdobe5k", "HCOCO", "HFlickr", "Hday2night")
SPLITS = ("train", "test")
CONFIG_NAMES = ("le50", "all", *SUBSETS)  # the ihd builder's configs
LE50_LIST = "le50_{split}.txt"
IHD_LIST = "IHD_{split}.txt"


@dataclasses.dataclass
class SplitEntries:
    """The composites of one split and where they were listed."""

    entries: list[tuple[str, str]]  # (subset, composite file name), listed order, no duplicates
    lists_used: dict[str, str]  # subset (or "*": every subset) -> list file, relative to the root
    bad_lines: list[dict]  # {"file", "reason"}
    duplicates: int
    authoritative: bool  # True: a root le50 list, which is the split as it is (no re-filtering)


def read_lines(path: epath.Path) -> list[str]:
    """Non-empty, non-comment lines with '/' separators and no leading './'."""
    lines = []
    for raw in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        line = raw.strip().replace("\\", "/")
        if line and not line.startswith("#"):
            lines.append(line[2:] if line.startswith("./") else line)
    return lines


def entry_name(line: str, subset: str | None) -> tuple[str | None, str]:
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


def _root_list(root: epath.Path, file_name: str, bad_lines: list[dict]) -> list[tuple[str, str]]:
    """(subset, name) of every line of a root list (lines start with the subset), in order."""
    listed = []
    for number, line in enumerate(read_lines(root / file_name), 1):
        found, name = entry_name(line, None)
        if found is None or not name:
            bad_lines.append(
                {"file": f"{file_name}:{number}", "reason": f"list entry {line!r} names no subset"}
            )
        else:
            listed.append((found, name))
    return listed


def _dedupe(listed: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], int]:
    seen: set[tuple[str, str]] = set()
    entries = []
    for entry in listed:
        if entry not in seen:
            seen.add(entry)
            entries.append(entry)
    return entries, len(listed) - len(entries)


def le50_list_path(root: epath.Path, split: str) -> epath.Path:
    return epath.Path(root) / LE50_LIST.format(split=split)


def split_lists(root: epath.Path, split: str, subsets: Sequence[str], *, use_le50: bool) -> SplitEntries:
    """The composites listed for ``split`` in ``subsets`` (see the module doc for the precedence)."""
    root = epath.Path(root)
    bad_lines: list[dict] = []
    le50 = le50_list_path(root, split)
    if use_le50 and le50.exists():
        wanted = set(subsets)
        listed = [entry for entry in _root_list(root, le50.name, bad_lines) if entry[0] in wanted]
        entries, duplicates = _dedupe(listed)
        used = {"*": le50.name} if tuple(subsets) == SUBSETS else {s: le50.name for s in subsets}
        return SplitEntries(entries, used, bad_lines, duplicates, authoritative=True)

    ihd_list = root / IHD_LIST.format(split=split)
    root_names: dict[str, list[str]] = collections.defaultdict(list)
    if ihd_list.exists():
        for subset, name in _root_list(root, ihd_list.name, bad_lines):
            root_names[subset].append(name)
    listed: list[tuple[str, str]] = []
    lists_used: dict[str, str] = {}
    for subset in subsets:
        own = root / subset / f"{subset}_{split}.txt"
        if own.exists():
            lists_used[subset] = f"{subset}/{own.name}"
            for number, line in enumerate(read_lines(own), 1):
                found, name = entry_name(line, subset)
                if found not in (None, subset) or not name:
                    bad_lines.append(
                        {
                            "file": f"{subset}/{own.name}:{number}",
                            "reason": f"list entry {line!r} is not in {subset}",
                        }
                    )
                else:
                    listed.append((subset, name))
        elif subset in root_names:
            lists_used[subset] = ihd_list.name
            listed += [(subset, name) for name in root_names[subset]]
    entries, duplicates = _dedupe(listed)
    return SplitEntries(entries, lists_used, bad_lines, duplicates, authoritative=False)

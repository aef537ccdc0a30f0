"""Root ``le50_train.txt`` / ``le50_test.txt`` (official DIRL/MadisNet split) on a trimmed iHarmony4 copy.

The tree has all four sub-datasets but keeps only a handful of images each, while the root le50
lists still name a few hundred composites (as a user who trimmed the download would have it).
"""

from __future__ import annotations

import io
import json
import logging
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jirl.data import ihd, record_index

H, W = 24, 32
SUBSETS = {"HAdobe5k": "a", "HCOCO": "c", "HFlickr": "f", "Hday2night": "d"}
LISTED = {"train": range(100), "test": range(1000, 1025)}  # indices of the composites listed per subset
KEPT = {"train": (3, 17, 42, 77), "test": (1005, 1011)}  # the indices whose files exist
TRUNCATED = ("HFlickr", "train", 17)  # composite present but truncated: skipped
NO_MASK = ("HAdobe5k", "train", 77)  # composite present, mask missing: skipped
LARGE_MASK = ("HCOCO", "train", 42)  # 75 % foreground: kept (the le50 list is not re-filtered)


def _composite_name(subset: str, index: int) -> str:
    return f"{SUBSETS[subset]}{index}_1_1.jpg"


def _write_example(root, subset: str, split: str, index: int) -> None:
    prefix = SUBSETS[subset]
    rng = np.random.default_rng(index)
    real = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    fraction = 0.75 if (subset, split, index) == LARGE_MASK else 0.25
    mask = np.zeros((H, W), np.uint8)
    mask[: int(fraction * H)] = 255
    composite = real.copy()
    composite[mask > 0] //= 2
    base = os.path.join(root, subset)
    for folder in ("composite_images", "masks", "real_images"):
        os.makedirs(os.path.join(base, folder), exist_ok=True)
    path = os.path.join(base, "composite_images", _composite_name(subset, index))
    if (subset, split, index) == TRUNCATED:
        buffer = io.BytesIO()
        Image.fromarray(composite).save(buffer, format="JPEG")
        with open(path, "wb") as f:
            f.write(buffer.getvalue()[:-100])
    else:
        Image.fromarray(composite).save(path, quality=95)
    if (subset, split, index) != NO_MASK:
        Image.fromarray(mask).save(os.path.join(base, "masks", f"{prefix}{index}_1.png"))
    Image.fromarray(real).save(os.path.join(base, "real_images", f"{prefix}{index}.jpg"), quality=95)


def build_trimmed_tree(root) -> dict[str, list[tuple[str, str]]]:
    """Writes the tree; returns each split's expected records: listed order minus missing/unreadable."""
    expected = {}
    for offset, split in enumerate(("train", "test")):
        rng = np.random.default_rng(offset)
        listed = [(s, i) for s in SUBSETS for i in LISTED[split]]
        listed = [listed[k] for k in rng.permutation(len(listed))]  # subsets interleaved
        lines = [f"{s}/composite_images/{_composite_name(s, i)}" for s, i in listed]
        lines.insert(7, "not_a_subset/composite_images/x1_1_1.jpg")  # a bad line
        lines.append(lines[0])  # a duplicate
        with open(os.path.join(root, f"le50_{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        for subset in SUBSETS:
            for index in KEPT[split]:
                _write_example(root, subset, split, index)
        expected[split] = [
            (s, _composite_name(s, i))
            for s, i in listed
            if i in KEPT[split] and (s, split, i) not in (TRUNCATED, NO_MASK)
        ]
    # A per-subset list in another order, which le50 must not use (and "all" must).
    for split in ("train", "test"):
        names = [_composite_name("HCOCO", i) for i in reversed(KEPT[split])]
        with open(os.path.join(root, "HCOCO", f"HCOCO_{split}.txt"), "w") as f:
            f.write("\n".join(names) + "\n")
    return expected


@pytest.fixture(scope="module")
def trimmed(tmp_path_factory):
    root = tmp_path_factory.mktemp("ihd_trimmed")
    return root, build_trimmed_tree(str(root))


def _prepare(config: str, data_dir, manual_dir):
    builder = tfds.builder(f"ihd/{config}", data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def _records(builder, split: str) -> list[tuple[str, str]]:
    source = builder.as_data_source(split=split)
    return [(source[i]["subset"].decode(), source[i]["name"].decode()) for i in range(len(source))]


def _report(builder, split: str) -> dict:
    with open(os.path.join(builder.data_dir, f"preparation_report_{split}.json")) as f:
        return json.load(f)


def test_trimmed_copy_with_full_le50_lists_prepares_with_the_tfds_api(trimmed, tmp_path, caplog):
    raw, expected = trimmed
    with caplog.at_level(logging.INFO, logger="absl"):
        builder = _prepare("le50", tmp_path, raw)
    assert builder.is_prepared()
    for split in ("train", "test"):
        # Exactly the listed lines minus missing/unreadable files, in list order.
        records = _records(builder, split)
        assert records == expected[split]
        assert record_index.read_record_index(builder.data_dir, split, len(records)) == records
        report = _report(builder, split)
        assert report["lists"] == {"*": f"le50_{split}.txt"}
        assert report["list_policy"] == "root le50 lists (authoritative)"
        assert report["max_mask_fraction"] is None and report["num_filtered_by_mask_fraction"] == 0
        assert report["num_listed"] == 4 * len(LISTED[split]) and report["duplicate_list_entries"] == 1
        assert report["count_check"] == {
            "expected": {"train": 64255, "test": 7237}[split],
            "kept": len(expected[split]),
            "skipped_examples": 4 * len(LISTED[split]) - len(expected[split]),
            "status": "mismatch",
        }
        # Every missing file is in the report; the bad line too.
        missing = [item for item in report["skipped"] if item["reason"] == "composite: missing file"]
        assert len(missing) == 4 * (len(LISTED[split]) - len(KEPT[split]))
        assert any("names no subset" in item["reason"] for item in report["skipped"])
    # The >50 % mask listed by le50_train.txt is kept; the broken examples are reported.
    assert ("HCOCO", "c42_1_1.jpg") in _records(builder, "train")
    skipped = {item["file"]: item["reason"] for item in _report(builder, "train")["skipped"]}
    assert "truncated" in skipped[os.path.join("HFlickr", "composite_images", "f17_1_1.jpg")]
    assert "missing" in skipped[os.path.join("HAdobe5k", "masks", "a77_1.png")]
    # One clear warning per split about the size, and a log that names few files.
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    size = [m for m in messages if "full dataset's le50 split has" in m]
    assert len(size) == 2 and "64,255" in size[0] and "strict_counts=True" in size[0]
    listing = [m for m in messages if "files skipped" in m]
    assert len(listing) == 2
    for message in listing:
        assert len(message.splitlines()) <= 1 + ihd.LOG_LIMIT + 1
        assert "more skipped files: see" in message


def test_subset_configs_use_their_lines_of_the_le50_lists(trimmed, tmp_path):
    raw, expected = trimmed
    builder = _prepare("HCOCO", tmp_path, raw)
    for split in ("train", "test"):
        assert _records(builder, split) == [entry for entry in expected[split] if entry[0] == "HCOCO"]
        report = _report(builder, split)
        assert report["lists"] == {"HCOCO": f"le50_{split}.txt"}
        assert report["count_check"]["status"] == "not checked"


def test_all_ignores_the_le50_lists(trimmed, tmp_path):
    raw, _ = trimmed
    builder = _prepare("all", tmp_path, raw)
    # Only HCOCO has its own lists: their order, every mask size.
    assert _records(builder, "train") == [("HCOCO", _composite_name("HCOCO", i)) for i in (77, 42, 17, 3)]
    report = _report(builder, "train")
    assert report["lists"] == {"HCOCO": "HCOCO/HCOCO_train.txt"}
    assert report["list_policy"] == "per-subset / IHD lists, every mask size"


def test_a_missing_subset_directory_is_summarised_not_listed(trimmed, tmp_path):
    raw, expected = trimmed
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("HCOCO", "HFlickr", "le50_train.txt", "le50_test.txt"):
        os.symlink(raw / name, partial / name)
    builder = _prepare("le50", tmp_path / "tfds", partial)
    wanted = {"HCOCO", "HFlickr"}
    assert _records(builder, "train") == [entry for entry in expected["train"] if entry[0] in wanted]
    report = _report(builder, "train")
    assert report["missing_subsets"] == {"HAdobe5k": 100, "Hday2night": 100}
    assert not any(item["file"].startswith(("HAdobe5k", "Hday2night")) for item in report["skipped"])
    assert report["count_check"]["status"] == "not checked"


def test_a_split_with_no_usable_image_is_a_clear_error(trimmed, tmp_path):
    raw, _ = trimmed
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in (*SUBSETS, "le50_train.txt"):
        os.symlink(raw / name, copy / name)
    (copy / "le50_test.txt").write_text(
        "HCOCO/composite_images/c9999_1_1.jpg\nHFlickr/composite_images/f9_9_9.jpg\n"
    )
    with pytest.raises(ValueError, match=r"le50 test: none of the 2 listed composites is usable \(2 missing"):
        _prepare("le50", tmp_path / "tfds", copy)
    assert not tfds.builder("ihd/le50", data_dir=str(tmp_path / "tfds")).is_prepared()

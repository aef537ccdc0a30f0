"""Tests of the iHarmony4 TFDS builder ``ihd`` on a miniature iHarmony4-shaped tree with bad files."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds
from jirl.configs.default import data_config
from PIL import Image, ImageFile

from jirl import data
from jirl.data import ihd, ihd_lists, images

H, W = 24, 32
SUBSETS = {"HAdobe5k": "a", "HCOCO": "c", "HFlickr": "f", "Hday2night": "d"}
ROWS = {0.25: 6, 0.5: 12, 0.75: 18}  # mask fraction -> foreground rows of the 24-row mask

# (split, composite stem "<a>_<b>_<c>", mask fraction) of the clean examples of every subset.
CLEAN = [
    ("train", "1_1_1", 0.25),
    ("train", "1_2_1", 0.5),  # exactly half: kept by le50
    ("train", "2_1_1", 0.75),
    ("train", "2_1_2", 0.75),  # shares mask 2_1 with the previous composite
    ("test", "3_1_1", 0.25),
    ("test", "3_2_1", 0.75),
]
# Broken or unusual examples: (subset, split, stem, defect, expected outcome). All masks 25 %.
DEFECTS = [
    ("HAdobe5k", "train", "5_1_1", "missing_composite", "skip"),
    ("HAdobe5k", "train", "6_1_1", "truncated_composite", "skip"),
    ("HCOCO", "train", "5_1_1", "random_bytes_mask", "skip"),
    ("HCOCO", "train", "6_1_1", "small_mask", "convert"),
    ("HCOCO", "train", "7_1_1", "grey_real", "convert"),
    ("HFlickr", "train", "5_1_1", "rgba_composite", "convert"),
    ("HFlickr", "train", "6_1_1", "mask16", "convert"),
    ("Hday2night", "train", "5_1_1", "palette_composite", "convert"),
    ("Hday2night", "train", "6_1_1", "grey16_real", "convert"),
    ("Hday2night", "train", "7_1_1", "missing_real", "skip"),
    ("HCOCO", "test", "8_1_1", "truncated_real", "skip"),
    ("Hday2night", "test", "8_1_1", "random_bytes_composite", "skip"),
]
# Expected sizes of the miniature tree.
LE50 = {"train": 4 * 2 + 6, "test": 4 * 1}  # 14 / 4
ALL = {"train": 4 * 4 + 6, "test": 4 * 2}  # 22 / 8
HCOCO_LE50 = {"train": 2 + 2, "test": 1}
SKIPPED = {"train": 4, "test": 2}


def _rgb(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 220, size=(1, 1, 3))
    ramp = np.linspace(0, 30, W)[None, :, None]
    return np.clip(base + ramp + rng.integers(0, 8, size=(H, W, 3)), 0, 255).astype(np.uint8)


def _mask(fraction: float, height: int = H, width: int = W) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[: int(round(fraction * height))] = 255
    return mask


def _save(path, image: Image.Image, fmt: str, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, format=fmt, **kwargs)


def _jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def build_tree(root, list_format: str) -> dict:
    """Writes the miniature tree; returns {(subset, name): composite file name} of every example.

    list_format "subset": per-subset lists only (bare and composite_images/ names mixed);
    "root": IHD_{train,test}.txt for every subset, plus an HCOCO list that must win over the root
    lists' HCOCO lines (the root list names an extra, missing HCOCO composite and a duplicate).
    """
    lists = {(s, split): [] for s in SUBSETS for split in ("train", "test")}
    rng = np.random.default_rng(0)
    for subset, prefix in SUBSETS.items():
        base = os.path.join(root, subset)
        rows = [(split, stem, frac, None) for split, stem, frac in CLEAN]
        rows += [(split, stem, 0.25, defect) for s, split, stem, defect, _ in DEFECTS if s == subset]
        for split, stem, frac, defect in rows:
            a, b, _ = stem.split("_")
            name = f"{prefix}{stem}.jpg"
            real = _rgb(sum(map(ord, subset + a)))
            composite = real.copy()
            fg = _mask(frac) > 0
            composite[fg] = (composite[fg] * 0.6).astype(np.uint8)
            comp_path = os.path.join(base, "composite_images", name)
            mask_path = os.path.join(base, "masks", f"{prefix}{a}_{b}.png")
            real_path = os.path.join(base, "real_images", f"{prefix}{a}.jpg")
            os.makedirs(os.path.dirname(comp_path), exist_ok=True)
            # Composite.
            if defect == "rgba_composite":
                name = f"{prefix}{stem}.png"
                comp_path = os.path.join(base, "composite_images", name)
                rgba = np.concatenate([composite, np.full((H, W, 1), 128, np.uint8)], -1)
                _save(comp_path, Image.fromarray(rgba, "RGBA"), "PNG")
            elif defect == "palette_composite":
                name = f"{prefix}{stem}.png"
                comp_path = os.path.join(base, "composite_images", name)
                _save(comp_path, Image.fromarray(composite).convert("P"), "PNG")
            elif defect == "truncated_composite":
                with open(comp_path, "wb") as f:
                    f.write(_jpeg_bytes(composite)[:-200])
            elif defect == "random_bytes_composite":
                with open(comp_path, "wb") as f:
                    f.write(rng.bytes(500))
            elif defect != "missing_composite":
                _save(comp_path, Image.fromarray(composite), "JPEG", quality=95)
            # Mask.
            if defect == "random_bytes_mask":
                with open(mask_path, "wb") as f:
                    f.write(rng.bytes(300))
            elif defect == "small_mask":
                _save(mask_path, Image.fromarray(_mask(frac, H // 2, W // 2)), "PNG")
            elif defect == "mask16":
                _save(mask_path, Image.fromarray(_mask(frac).astype(np.uint16) * 257), "PNG")
            else:
                _save(mask_path, Image.fromarray(_mask(frac)), "PNG")
            # Real.
            if defect == "grey_real":
                _save(real_path, Image.fromarray(real[..., 0]), "JPEG")
            elif defect == "grey16_real":
                real_path = real_path[:-4] + ".png"
                _save(real_path, Image.fromarray(real[..., 0].astype(np.uint16) * 257), "PNG")
            elif defect == "truncated_real":
                with open(real_path, "wb") as f:
                    f.write(_jpeg_bytes(real)[:-150])
            elif defect != "missing_real" and not os.path.exists(real_path):
                _save(real_path, Image.fromarray(real), "JPEG", quality=95)
            lists[(subset, split)].append(name)
    for split in ("train", "test"):
        if list_format == "subset":
            for subset in SUBSETS:
                names = lists[(subset, split)]
                lines = [n if i % 2 else f"composite_images/{n}" for i, n in enumerate(names)]
                with open(os.path.join(root, subset, f"{subset}_{split}.txt"), "w") as f:
                    f.write("\n".join(lines) + "\n")
        else:
            lines = []
            for subset in SUBSETS:
                names = list(lists[(subset, split)])
                if subset == "HCOCO":
                    names.append("c99_1_1.jpg")  # only in the root list: must be ignored
                lines += [f"{subset}/composite_images/{n}" for n in names]
            lines.append(lines[0])  # a duplicate line
            with open(os.path.join(root, f"IHD_{split}.txt"), "w") as f:
                f.write("\r\n".join(lines) + "\r\n")
            with open(os.path.join(root, "HCOCO", f"HCOCO_{split}.txt"), "w") as f:
                f.write("\n".join(lists[("HCOCO", split)]) + "\n")
    return lists


def prepare(data_dir, manual_dir, config="le50", counts=None):
    """Prepares with the TFDS API; ``counts``: le50 sizes to expect instead of the full dataset's."""
    builder = tfds.builder(f"ihd/{config}", data_dir=str(data_dir))
    with pytest.MonkeyPatch.context() as mp:
        if counts is not None:
            mp.setattr(ihd.IHarmony4, "EXPECTED_LE50_TRAIN", counts["train"])
            mp.setattr(ihd.IHarmony4, "EXPECTED_LE50_TEST", counts["test"])
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
    return builder


def read_report(builder, split) -> dict:
    with open(os.path.join(builder.data_dir, f"preparation_report_{split}.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def raw_subset_lists(tmp_path_factory):
    root = tmp_path_factory.mktemp("ihd_raw_subset")
    build_tree(str(root), "subset")
    return root


@pytest.fixture(scope="module")
def raw_root_lists(tmp_path_factory):
    root = tmp_path_factory.mktemp("ihd_raw_root")
    build_tree(str(root), "root")
    return root


@pytest.fixture(scope="module")
def le50(raw_subset_lists, tmp_path_factory):
    # The full-dataset count check runs (all four subsets and lists exist) against the tree's sizes.
    return prepare(tmp_path_factory.mktemp("tfds_le50"), raw_subset_lists, "le50", counts=LE50)


# ------------------------------------------------------------------------------------------------


def test_truncated_images_are_not_accepted_globally():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_builder_is_registered_with_configs():
    builder_cls = tfds.builder_cls("ihd")
    assert builder_cls is ihd.IHarmony4
    names = [c.name for c in builder_cls.BUILDER_CONFIGS]
    assert names == ["le50", "all", "HAdobe5k", "HCOCO", "HFlickr", "Hday2night"]
    assert builder_cls.DEFAULT_BUILDER_CONFIG_NAME == "le50"
    assert "composite_images" in builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS
    for c in builder_cls.BUILDER_CONFIGS[2:]:
        assert "le50" in c.description and c.subsets == (c.name,)
    assert tuple(names) == ihd_lists.CONFIG_NAMES  # what validate_data_config accepts
    assert (ihd.IHarmony4.EXPECTED_LE50_TRAIN, ihd.IHarmony4.EXPECTED_LE50_TEST) == (64255, 7237)
    assert str(builder_cls.VERSION) == "1.1.0" and "le50_train.txt" in builder_cls.RELEASE_NOTES["1.1.0"]


def test_le50_counts_and_rule(le50):
    for split in ("train", "test"):
        source = le50.as_data_source(split=split)
        assert len(source) == LE50[split]
        fractions = [float(source[i]["mask_fraction"]) for i in range(len(source))]
        assert max(fractions) <= 0.5
        assert (0.5 in fractions) == (split == "train")  # exactly 50 % is kept
    assert le50.info.splits["train"].num_examples == LE50["train"]
    assert le50.info.file_format.value == "array_record"
    assert le50.data_dir.endswith(os.path.join("ihd", "le50", "1.1.0"))


def test_features(le50, raw_subset_lists):
    source = le50.as_data_source(split="train")
    names = set()
    for i in range(len(source)):
        ex = source[i]
        assert set(ex) == {"composite", "mask", "real", "subset", "name", "mask_fraction"}
        assert ex["composite"].dtype == ex["real"].dtype == ex["mask"].dtype == np.uint8
        assert ex["composite"].shape == ex["real"].shape == (H, W, 3)
        assert ex["mask"].shape == (H, W, 1)
        assert set(np.unique(ex["mask"])) <= {0, 255}
        assert ex["mask_fraction"] == pytest.approx((ex["mask"] > 0).mean())
        subset, name = ex["subset"].decode(), ex["name"].decode()
        assert subset in SUBSETS and name.startswith(SUBSETS[subset])
        names.add((subset, name))
    assert len(names) == len(source)
    # The resized mask keeps its foreground share; the converted examples are in.
    assert ("HCOCO", "c6_1_1.jpg") in names and ("HFlickr", "f5_1_1.png") in names
    # A clean JPEG composite is stored as its original bytes.
    raw = le50.as_data_source(split="train", decoders={"composite": tfds.decode.SkipDecoding()})
    index = next(i for i in range(len(source)) if source[i]["name"] == b"a1_1_1.jpg")
    with open(os.path.join(raw_subset_lists, "HAdobe5k", "composite_images", "a1_1_1.jpg"), "rb") as f:
        assert raw[index]["composite"] == f.read()
    # A converted one (RGBA) is PNG.
    index = next(i for i in range(len(source)) if source[i]["name"] == b"f5_1_1.png")
    assert raw[index]["composite"][:8] == b"\x89PNG\r\n\x1a\n"
    # Grey 16-bit real -> 8-bit RGB with equal channels.
    index = next(i for i in range(len(source)) if source[i]["name"] == b"d6_1_1.jpg")
    real = source[index]["real"]
    np.testing.assert_array_equal(real[..., 0], real[..., 2])


def test_report_names_every_skipped_and_converted_file(le50):
    train = read_report(le50, "train")
    skipped = {item["file"]: item["reason"] for item in train["skipped"]}
    assert len(train["skipped"]) == SKIPPED["train"]
    assert "missing" in skipped[os.path.join("HAdobe5k", "composite_images", "a5_1_1.jpg")]
    assert "truncated" in skipped[os.path.join("HAdobe5k", "composite_images", "a6_1_1.jpg")]
    assert "cannot decode" in skipped[os.path.join("HCOCO", "masks", "c5_1.png")]
    assert "missing" in skipped[os.path.join("Hday2night", "real_images", "d7.jpg")]
    converted = {item["file"]: " ".join(item["conversions"]) for item in train["converted"]}
    assert "resized 16x12->32x24" in converted[os.path.join("HCOCO", "masks", "c6_1.png")]
    assert "grey->RGB" in converted[os.path.join("HCOCO", "real_images", "c7.jpg")]
    assert "RGBA->RGB" in converted[os.path.join("HFlickr", "composite_images", "f5_1_1.png")]
    assert "16-bit" in converted[os.path.join("HFlickr", "masks", "f6_1.png")]
    assert "palette->RGB" in converted[os.path.join("Hday2night", "composite_images", "d5_1_1.png")]
    assert "16-bit" in converted[os.path.join("Hday2night", "real_images", "d6.png")]
    assert len(converted) == 6
    assert train["num_examples"] == LE50["train"]
    assert train["num_filtered_by_mask_fraction"] == 4 * 2
    assert train["list_policy"] == "per-subset / IHD lists, masks covering <= 50%"
    assert train["count_check"] == {"expected": 14, "kept": 14, "skipped_examples": 4, "status": "match"}
    test = read_report(le50, "test")
    skipped = {item["file"]: item["reason"] for item in test["skipped"]}
    assert set(skipped) == {
        os.path.join("HCOCO", "real_images", "c8.jpg"),
        os.path.join("Hday2night", "composite_images", "d8_1_1.jpg"),
    }
    assert "truncated" in skipped[os.path.join("HCOCO", "real_images", "c8.jpg")]


def test_all_and_subset_configs(raw_subset_lists, tmp_path):
    builder = prepare(tmp_path, raw_subset_lists, "all")
    for split in ("train", "test"):
        source = builder.as_data_source(split=split)
        assert len(source) == ALL[split]
        assert read_report(builder, split)["num_filtered_by_mask_fraction"] == 0
    assert (
        max(float(builder.as_data_source(split="train")[i]["mask_fraction"]) for i in range(ALL["train"]))
        > 0.5
    )
    builder = prepare(tmp_path, raw_subset_lists, "HCOCO")
    for split in ("train", "test"):
        source = builder.as_data_source(split=split)
        assert len(source) == HCOCO_LE50[split]
        assert {source[i]["subset"] for i in range(len(source))} == {b"HCOCO"}


def test_root_lists_and_preference_for_subset_lists(raw_root_lists, tmp_path):
    builder = prepare(tmp_path, raw_root_lists, "le50", counts=LE50)
    for split in ("train", "test"):
        assert len(builder.as_data_source(split=split)) == LE50[split]
        report = read_report(builder, split)
        assert report["lists"]["HCOCO"] == os.path.join("HCOCO", f"HCOCO_{split}.txt")
        assert report["lists"]["HFlickr"] == f"IHD_{split}.txt"
        assert report["list_policy"] == "per-subset / IHD lists, masks covering <= 50%"
        assert report["duplicate_list_entries"] == 1
        assert not any("c99" in item["file"] for item in report["skipped"])
        assert len(report["skipped"]) == SKIPPED[split]


def test_count_mismatch_warns_and_reports(raw_subset_lists, tmp_path, caplog):
    """All four subsets present, counts differ: prepared anyway, with a warning and a report field."""
    counts = {"train": LE50["train"] + 5, "test": LE50["test"]}
    with caplog.at_level(logging.WARNING, logger="absl"):
        builder = prepare(tmp_path, raw_subset_lists, "le50", counts=counts)
    assert len(builder.as_data_source(split="train")) == LE50["train"]
    check = read_report(builder, "train")["count_check"]
    assert check == {
        "expected": LE50["train"] + 5,
        "kept": LE50["train"],
        "skipped_examples": 4,
        "status": "mismatch",
    }
    assert read_report(builder, "test")["count_check"]["status"] == "match"
    warnings = [r.getMessage() for r in caplog.records if "full dataset's le50 split has" in r.getMessage()]
    assert len(warnings) == 1 and "strict_counts=True" in warnings[0] and "train: 14 examples" in warnings[0]


def test_strict_counts_refuses_a_mismatch(raw_subset_lists, tmp_path):
    counts = {"train": LE50["train"] + 5, "test": LE50["test"]}
    builder = tfds.builder("ihd/le50", data_dir=str(tmp_path), strict_counts=True)
    assert builder.strict_counts and pickle.loads(pickle.dumps(builder)).strict_counts
    with (
        pytest.MonkeyPatch.context() as mp,
        pytest.raises(ValueError, match=r"le50 train: 14 examples.* has 19"),
    ):
        mp.setattr(ihd.IHarmony4, "EXPECTED_LE50_TRAIN", counts["train"])
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(raw_subset_lists))
        )
    assert not tfds.builder("ihd/le50", data_dir=str(tmp_path)).is_prepared()  # nothing half-written
    # The real constants against the miniature tree: a mismatch too; the helper takes the flag.
    with pytest.raises(ValueError, match="64,255"):
        data.ihd_builder(str(tmp_path / "real"), manual_dir=str(raw_subset_lists), strict_counts=True)
    with pytest.raises(TypeError, match="strict_counts must be a bool"):
        ihd.IHarmony4(data_dir=str(tmp_path), strict_counts="yes")


def test_partial_copy_skips_the_count_check(raw_subset_lists, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for subset in ("HCOCO", "HFlickr"):
        os.symlink(raw_subset_lists / subset, partial / subset)
    builder = prepare(tmp_path / "tfds", partial, "le50")  # Real constants: no check.
    assert len(builder.as_data_source(split="train")) == 2 + 2 + 2 + 2
    check = read_report(builder, "train")["count_check"]
    assert check["status"] == "not checked" and "HAdobe5k, Hday2night" in check["reason"]


def test_pipeline_ihd_batches(le50, raw_subset_lists):
    cfg = data_config()
    assert cfg.ihd.config == "le50" and cfg.ihd.manual_dir == ""
    cfg.source = "ihd"
    cfg.data_dir = os.path.dirname(os.path.dirname(os.path.dirname(le50.data_dir)))
    cfg.crop_size = 16
    # "train" is the prepared train split minus "val" (whole real-image groups: here 2 composites).
    val = data.load_source(cfg, "val")
    num_val = len(val)
    assert num_val == 2 and data.num_eval_batches(cfg, "val", batch_size=3) == 1
    train = data.load_source(cfg, "train")

    def reals(source) -> set:
        return {(ex["subset"], ex["name"].split(b"_")[0]) for ex in (source[i] for i in range(len(source)))}

    assert len(reals(val)) == 1 and not reals(val) & reals(train)  # one real image's two composites
    assert data.steps_per_epoch(cfg, 4) == (LE50["train"] - num_val) // 4
    # Grain worker processes unpickle the data source (which re-creates the builder).
    source = pickle.loads(pickle.dumps(data.load_source(cfg, "train")))
    assert len(source) == LE50["train"] - num_val and source[0]["composite"].shape == (H, W, 3)
    batch = next(data.train_batches(cfg, batch_size=4, seed=0))
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
    assert batch["mask"].shape == (4, 16, 16, 1) and set(np.unique(batch["mask"])) <= {0.0, 1.0}
    assert batch["real"].shape == (4, 16, 16, 3)
    assert set(batch["subset"]) <= set(SUBSETS)
    assert data.num_eval_batches(cfg, "test", batch_size=3) == 2
    batches = list(data.eval_batches(cfg, "test", batch_size=3))
    assert len(batches) == 2
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid.sum() == LE50["test"]
    names = np.concatenate([b["name"] for b in batches])[valid]
    assert all(str(n).split("_")[0][1:] == "3" for n in names)  # the clean 25 % test examples


def test_pipeline_ihd_prepares_from_manual_dir_and_explains_missing_download(raw_subset_lists, tmp_path):
    cfg = data_config()
    cfg.source = "ihd"
    cfg.data_dir = str(tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match="data.ihd.manual_dir"):
        data.load_source(cfg, "train")
    cfg.ihd.config = "HFlickr"
    cfg.ihd.manual_dir = str(raw_subset_lists)
    assert len(data.load_source(cfg, "train")) == 4
    cfg.ihd.manual_dir = ""  # Prepared now: the download is no longer needed.
    assert len(data.load_source(cfg, "test")) == 1
    cfg.ihd.config = "nope"
    with pytest.raises(ValueError, match="data.ihd.config"):
        data.load_source(cfg, "train")


def test_ihd_builder_helper(raw_subset_lists, tmp_path):
    builder = data.ihd_builder(str(tmp_path), "Hday2night", manual_dir=str(raw_subset_lists))
    assert len(builder.as_data_source(split="train")) == 2 + 2
    assert read_report(builder, "train")["skipped"][0]["example"] == "Hday2night/d7_1_1.jpg"


def test_load_rgb_and_mask_conversions(tmp_path):
    rgb = _rgb(1)
    path = tmp_path / "x.png"
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert images.load_rgb(tmp_path / "cmyk.jpg").conversions == ["CMYK->RGB"]
    Image.fromarray(rgb).save(path)
    loaded = images.load_rgb(path)
    assert loaded.conversions == [] and loaded.original == path.read_bytes()
    grey = np.zeros((H, W), np.uint8)
    grey[:, :5] = 200
    grey[:, 5:8] = 100
    Image.fromarray(grey).convert("RGB").save(path)
    mask = images.load_mask(path)
    assert mask.array.shape == (H, W, 1) and set(np.unique(mask.array)) == {0, 255}
    assert (mask.array[..., 0] > 0).sum() == 5 * H  # > 127 only
    assert any("binarized" in c for c in mask.conversions)
    with pytest.raises(images.BadImageError, match="missing"):
        images.load_rgb(tmp_path / "nope.jpg")

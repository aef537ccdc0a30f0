"""Tests of the folder source (``data.source="folder"``): both layouts, bad files, the pipeline."""

from __future__ import annotations

import os

import numpy as np
import pytest
from jirl.configs.default import data_config
from PIL import Image

from jirl import data
from jirl.data import folder

H, W = 20, 28


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(H, W, 3), dtype=np.uint8)


def _mask(rows: int, height: int = H, width: int = W) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[:rows] = 255
    return mask


def _save(path, array, fmt="PNG", mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(path, format=fmt)


def ihd_layout(root) -> str:
    """4 composites: one with a missing real image, one RGBA, one unreadable (skipped)."""
    for i in range(1, 5):
        _save(os.path.join(root, "composite_images", f"x{i}_1_1.png"), _rgb(i))
        _save(os.path.join(root, "masks", f"x{i}_1.png"), _mask(i * 3))
        if i != 2:
            _save(os.path.join(root, "real_images", f"x{i}.png"), _rgb(100 + i))
    rgba = np.concatenate([_rgb(3), np.full((H, W, 1), 7, np.uint8)], -1)
    _save(os.path.join(root, "composite_images", "x3_1_1.png"), rgba, mode="RGBA")
    with open(os.path.join(root, "composite_images", "x5_1_1.jpg"), "wb") as f:
        f.write(b"not an image at all")
    _save(os.path.join(root, "masks", "x5_1.png"), _mask(3))
    return str(root)


def flat_layout(root) -> str:
    """3 composites (one with a real image, one with a half-size mask), one broken mask."""
    for i, name in enumerate(["p", "q", "r"]):
        _save(os.path.join(root, f"{name}.jpg"), _rgb(10 + i), "JPEG")
    _save(os.path.join(root, "p_mask.png"), _mask(5))
    _save(os.path.join(root, "q_mask.png"), _mask(5, H // 2, W // 2))
    _save(os.path.join(root, "r_mask.png"), _mask(10))
    _save(os.path.join(root, "q_real.jpg"), _rgb(99), "JPEG")
    _save(os.path.join(root, "s.jpg"), _rgb(12), "JPEG")
    with open(os.path.join(root, "s_mask.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n broken")
    return str(root)


def test_ihd_naming(tmp_path):
    source = folder.FolderSource(ihd_layout(tmp_path / "mine"))
    assert source.layout == "ihd" and len(source) == 4
    assert len(source.skipped) == 1 and "x5_1_1.jpg" in source.skipped[0]
    assert any("RGBA->RGB" in c for c in source.converted)
    names = [source[i]["name"] for i in range(len(source))]
    assert names == [f"x{i}_1_1.png" for i in range(1, 5)]
    for i in range(len(source)):
        ex = source[i]
        assert set(ex) == {"composite", "mask", "real", "subset", "name", "mask_fraction"}
        assert ex["composite"].shape == ex["real"].shape == (H, W, 3) and ex["composite"].dtype == np.uint8
        assert ex["mask"].shape == (H, W, 1) and ex["mask"].dtype == np.uint8
        assert set(np.unique(ex["mask"])) <= {0, 255}
        assert ex["subset"] == "mine"
        assert ex["mask_fraction"] == pytest.approx((i + 1) * 3 / H)
    # x2 has no real image: the composite stands in.
    np.testing.assert_array_equal(source[1]["real"], source[1]["composite"])
    np.testing.assert_array_equal(source[0]["real"], _rgb(101))
    np.testing.assert_array_equal(source[-1]["composite"], source[3]["composite"])
    with pytest.raises(IndexError):
        source[4]


def test_flat_naming(tmp_path):
    source = folder.FolderSource(flat_layout(tmp_path / "flat"))
    assert source.layout == "flat" and len(source) == 3
    assert [source[i]["name"] for i in range(3)] == ["p.jpg", "q.jpg", "r.jpg"]
    assert len(source.skipped) == 1 and "s_mask.png" in source.skipped[0]
    p, q, r = source[0], source[1], source[2]
    np.testing.assert_array_equal(p["real"], p["composite"])  # no p_real: the composite
    assert not np.array_equal(q["real"], q["composite"])  # q_real.jpg
    assert q["mask"].shape == (H, W, 1) and q["mask_fraction"] == pytest.approx(10 / H)
    assert r["mask_fraction"] == pytest.approx(10 / H)
    assert any("resized" in c for c in source.converted)


def test_no_readable_examples_raises(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"junk")
    (root / "a_mask.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no usable composite/mask pairs"):
        folder.FolderSource(str(root))
    with pytest.raises(FileNotFoundError):
        folder.FolderSource(str(tmp_path / "missing"))


def test_pipeline_folder_batches(tmp_path):
    cfg = data_config()
    assert cfg.folder.train == "" and cfg.folder.test == ""
    cfg.source = "folder"
    cfg.crop_size = 16
    cfg.folder.train = ihd_layout(tmp_path / "train")
    with pytest.raises(ValueError, match="data.folder.test"):
        data.load_source(cfg, "test")
    cfg.folder.test = flat_layout(tmp_path / "test")
    assert data.steps_per_epoch(cfg, 2) == 2
    batches = [b for b, _ in zip(data.train_batches(cfg, batch_size=2, seed=0), range(3), strict=False)]
    for batch in batches:
        assert batch["image"].shape == (2, 16, 16, 3) and batch["image"].dtype == np.float32
        assert batch["mask"].shape == (2, 16, 16, 1) and set(np.unique(batch["mask"])) <= {0.0, 1.0}
        assert list(batch["subset"]) == ["train", "train"]
    assert data.num_eval_batches(cfg, "test", batch_size=2) == 2
    evals = list(data.eval_batches(cfg, "test", batch_size=2))
    assert [list(b["valid"]) for b in evals] == [[True, True], [True, False]]
    assert list(evals[0]["name"]) == ["p.jpg", "q.jpg"] and evals[1]["name"][0] == "r.jpg"
    # Grain worker processes unpickle the source.
    cfg.num_workers = 1
    again = list(data.eval_batches(cfg, "test", batch_size=2))
    for a, b in zip(evals, again, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])

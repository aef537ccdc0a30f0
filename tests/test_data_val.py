"""The "val" split carved from train: grouping by real image, determinism, and every source."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from jirl.configs.default import data_config
from PIL import Image

from jirl import data
from jirl.data import composites, record_index, sources, splits

NUM_TRAIN, NUM_TEST = 20, 4


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def names(source) -> list[str]:
    return [_text(source[i]["name"]) for i in range(len(source))]


def _forget_caches():
    """Drops the in-memory caches, so that a call recomputes the split from the data."""
    sources._SPLIT_CACHE.clear()
    record_index._CACHE.clear()


# ------------------------------------------------------------------------------------------------
# The carving rule.


def _groups(num: int, seed: int = 0) -> list[str]:
    """Group keys of ``num`` records: groups of 1-4 composites, members not adjacent."""
    rng = np.random.default_rng(seed)
    keys = []
    while len(keys) < num:
        keys += [f"S/r{len(keys)}"] * int(rng.integers(1, 5))
    keys = keys[:num]
    return [keys[i] for i in rng.permutation(num)]


def test_real_image_key():
    assert composites.real_image_key("HCOCO", "c12_3_4.jpg") == "HCOCO/c12"
    assert composites.real_image_key("HFlickr", "c12_3_4.jpg") == "HFlickr/c12"  # qualified by subset
    assert composites.real_image_key("mine", "IMG_0001.jpg") == "mine/IMG_0001"  # not a_b_c: its stem
    assert composites.real_image_key("mine", "photo.png") == "mine/photo"


def test_carve_is_deterministic_disjoint_by_group_and_sized():
    keys = _groups(300)
    carved = splits.carve_validation(keys, 0.1, seed=0)
    again = splits.carve_validation(list(keys), 0.1, seed=0)
    np.testing.assert_array_equal(carved.train, again.train)
    np.testing.assert_array_equal(carved.val, again.val)
    # A partition of the records, each part in record order.
    np.testing.assert_array_equal(np.sort(np.concatenate([carved.train, carved.val])), np.arange(300))
    assert np.all(np.diff(carved.val) > 0) and np.all(np.diff(carved.train) > 0)
    # Whole groups: no real image on both sides.
    assert not {keys[i] for i in carved.val} & {keys[i] for i in carved.train}
    # round(0.1 * 300) = 30 reached, overshooting by less than one group (<= 4).
    assert 30 <= len(carved.val) < 30 + 4
    # The groups taken are the first ones in sha256(seed:group) order.
    order = sorted(set(keys), key=lambda g: hashlib.sha256(f"0:{g}".encode()).digest())
    taken = {keys[i] for i in carved.val}
    assert set(order[: len(taken)]) == taken
    # Another seed: another split.
    other = splits.carve_validation(keys, 0.1, seed=1)
    assert not np.array_equal(other.val, carved.val)
    # Fraction 0: nothing held out.
    none = splits.carve_validation(keys, 0.0, seed=0)
    assert len(none.val) == 0 and len(none.train) == 300
    with pytest.raises(ValueError, match=r"data.validation_fraction must be in \[0, 1\)"):
        splits.carve_validation(keys, 1.0, seed=0)


def test_index_view_is_a_random_access_sequence():
    view = splits.IndexView(list("abcdef"), np.array([4, 1, 5]), name="val")
    assert len(view) == 3 and list(view) == ["e", "b", "f"] and view[-1] == "f" and view[0:2] == ["e", "b"]
    with pytest.raises(IndexError):
        view[3]


# ------------------------------------------------------------------------------------------------
# Through the pipeline: synthetic source.


@pytest.fixture(scope="module")
def synthetic_cfg(tmp_path_factory):
    cfg = data_config()
    cfg.data_dir = str(tmp_path_factory.mktemp("tfds_val"))
    cfg.image_size = 16
    cfg.num_train = NUM_TRAIN
    cfg.num_test = NUM_TEST
    cfg.crop_size = 16
    data.load_source(cfg, "test")  # prepares once
    return cfg


def _builder(cfg):
    return data.synthetic_builder(
        cfg.data_dir, image_size=16, num_train=NUM_TRAIN, num_test=NUM_TEST, seed=0, prepare=False
    )


def test_synthetic_val_split(synthetic_cfg):
    cfg = synthetic_cfg
    train, val, test = (data.load_source(cfg, split) for split in ("train", "val", "test"))
    assert len(val) == round(0.1 * NUM_TRAIN) == 2 and len(train) == NUM_TRAIN - 2
    # train + val = the prepared train split; no overlap with each other or with test.
    prepared = names(_builder(cfg).as_data_source(split="train"))
    assert sorted(names(train) + names(val)) == sorted(prepared)
    assert not set(names(val)) & set(names(train))
    assert not set(names(val)) & set(names(test))
    # "train" everywhere means train minus val.
    assert data.steps_per_epoch(cfg, 4) == (NUM_TRAIN - 2) // 4 == 4  # not 20 // 4
    seen = set()
    batches = data.train_batches(cfg, batch_size=3, seed=0)
    for _ in range(12):
        seen |= set(next(batches)["name"])
    assert seen <= set(names(train))
    # "val" evaluates like "test".
    assert data.num_eval_batches(cfg, "val", batch_size=3) == 1
    (batch,) = list(data.eval_batches(cfg, "val", batch_size=3))
    assert list(batch["valid"]) == [True, True, False] and list(batch["name"][:2]) == names(val)


def test_val_split_is_seeded_and_deterministic(synthetic_cfg):
    cfg = synthetic_cfg.copy_and_resolve_references()
    cfg.validation_fraction = 0.25
    first = names(data.load_source(cfg, "val"))
    _forget_caches()
    assert names(data.load_source(cfg, "val")) == first  # recomputed from the data: the same
    cfg.validation_seed = 1
    assert names(data.load_source(cfg, "val")) != first
    assert len(first) == 5


def test_fraction_zero_disables_val(synthetic_cfg):
    cfg = synthetic_cfg.copy_and_resolve_references()
    cfg.validation_fraction = 0.0
    assert len(data.load_source(cfg, "train")) == NUM_TRAIN
    assert data.steps_per_epoch(cfg, 4) == NUM_TRAIN // 4
    for call in (
        lambda: data.load_source(cfg, "val"),
        lambda: data.num_eval_batches(cfg, "val", batch_size=2),
        lambda: data.eval_batches(cfg, "val", batch_size=2),
    ):
        with pytest.raises(ValueError, match=r"no 'val' split: data.validation_fraction is 0"):
            call()


def test_empty_val_or_train_is_a_clear_error(synthetic_cfg):
    cfg = synthetic_cfg.copy_and_resolve_references()
    cfg.validation_fraction = 0.01  # round(0.2) = 0 of 20
    with pytest.raises(ValueError, match=r"the 'val' split is empty.*Raise data.validation_fraction"):
        data.load_source(cfg, "val")
    cfg.validation_fraction = 0.99  # round(19.8) = 20: nothing left to train on
    with pytest.raises(ValueError, match=r"the 'train' split is empty.*Lower data.validation_fraction"):
        data.steps_per_epoch(cfg, 1)


def test_record_index_sidecar_and_fallback(synthetic_cfg):
    builder = _builder(synthetic_cfg)
    path = record_index.record_index_path(builder.data_dir, "train")
    assert path.exists()  # written at preparation
    written = record_index.read_record_index(builder.data_dir, "train", NUM_TRAIN)
    assert [name for _, name in written] == names(builder.as_data_source(split="train"))
    # Without it (data prepared before it existed), the records are read and the index cached.
    path.unlink()
    _forget_caches()
    assert record_index.builder_record_keys(builder, "train") == written
    assert record_index.read_record_index(builder.data_dir, "train", NUM_TRAIN) == written
    # A stale one (another record count) is not trusted.
    assert record_index.read_record_index(builder.data_dir, "train", NUM_TRAIN + 1) is None


# ------------------------------------------------------------------------------------------------
# Folder source.


def _save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _ihd_folder(root, reals: int = 8, per_real: int = 3) -> str:
    rng = np.random.default_rng(0)
    for r in range(reals):
        _save(
            os.path.join(root, "real_images", f"r{r}.png"), rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)
        )
        for c in range(1, per_real + 1):
            _save(
                os.path.join(root, "composite_images", f"r{r}_{c}_1.png"),
                rng.integers(0, 256, (16, 20, 3), dtype=np.uint8),
            )
            mask = np.zeros((16, 20), np.uint8)
            mask[: 2 * c] = 255
            _save(os.path.join(root, "masks", f"r{r}_{c}.png"), mask)
    return str(root)


def test_folder_source_gets_a_val_split_grouped_by_real_image(tmp_path):
    cfg = data_config()
    cfg.source = "folder"
    cfg.crop_size = 16
    cfg.folder.train = _ihd_folder(tmp_path / "train")
    cfg.validation_fraction = 0.2  # round(0.2 * 24) = 5: two whole groups of 3
    train, val = data.load_source(cfg, "train"), data.load_source(cfg, "val")
    assert len(val) == 6 and len(train) == 18
    real = lambda source: {n.split("_")[0] for n in names(source)}  # noqa: E731
    assert len(real(val)) == 2 and not real(val) & real(train)
    assert sorted(names(train) + names(val)) == sorted(names(data.folder_source(cfg.folder.train)))
    assert data.steps_per_epoch(cfg, 4) == 18 // 4
    assert data.num_eval_batches(cfg, "val", batch_size=4) == 2


def test_flat_folder_names_are_their_own_groups(tmp_path):
    root = tmp_path / "flat"
    rng = np.random.default_rng(1)
    for i in range(10):  # IMG_2024_<i> looks like a_b_c but the flat layout has no shared reals
        _save(str(root / f"IMG_2024_{i}.png"), rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))
        _save(str(root / f"IMG_2024_{i}_mask.png"), np.full((12, 12), 255, np.uint8))
    source = data.folder_source(str(root))
    assert len(set(source.group_keys())) == 10
    cfg = data_config()
    cfg.source, cfg.crop_size, cfg.folder.train = "folder", 8, str(root)
    assert len(data.load_source(cfg, "val")) == 1

"""Tests of jirl.data: synthetic generator, TFDS builder, input pipeline (tiny settings)."""

from __future__ import annotations

import itertools
import pickle

import chex
import numpy as np
import pytest
from absl import flags
from jirl.configs.default import data_config
from scipy import ndimage

from jirl import data
from jirl.data import schema, synthetic, transforms
from jirl.data.tfds_synthetic import SyntheticComposites, synthetic_builder

SIZE = 48  # generated image size
CROP = 40  # model input size (differs from SIZE so resizing is exercised)
NUM_TRAIN = 13  # prepared; the default validation_fraction 0.1 holds round(1.3) = 1 out as "val"
TRAIN = 12  # the "train" split the pipeline reads
NUM_TEST = 5
MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # ImageNet's, as configs/default.py sets them
STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
    cfg = data_config()
    cfg.data_dir = str(tmp_path_factory.mktemp("tfds"))
    cfg.image_size = SIZE
    cfg.num_train = NUM_TRAIN
    cfg.num_test = NUM_TEST
    cfg.crop_size = CROP
    data.load_source(cfg, "train")  # Prepares the dataset once for the module.
    return cfg


def take(iterator, n):
    return list(itertools.islice(iterator, n))


def assert_batches_equal(a: list[dict], b: list[dict]):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


# ------------------------------------------------------------------------------------------------
# Generator.


def test_generator_is_deterministic():
    a = synthetic.generate_example("train", 3, image_size=SIZE, seed=0)
    b = synthetic.generate_example("train", 3, image_size=SIZE, seed=0)
    c = synthetic.generate_example("train", 3, image_size=SIZE, seed=1)
    for key in ("composite", "mask", "real"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["name"] == b["name"] and a["box"] == b["box"]
    assert any(not np.array_equal(a[k], c[k]) for k in ("composite", "mask", "real"))


@pytest.mark.parametrize("split", synthetic.SPLITS)
def test_generated_examples_are_valid_composites(split):
    for index in range(8):
        ex = synthetic.generate_example(split, index, image_size=SIZE, seed=0)
        chex.assert_shape(ex["composite"], (SIZE, SIZE, 3))
        chex.assert_shape(ex["real"], (SIZE, SIZE, 3))
        chex.assert_shape(ex["mask"], (SIZE, SIZE, 1))
        assert ex["composite"].dtype == ex["real"].dtype == ex["mask"].dtype == np.uint8
        assert set(np.unique(ex["mask"])) <= {0, 255}
        fg = ex["mask"][..., 0] > 0
        assert ex["mask_fraction"] == pytest.approx(fg.mean())
        assert synthetic.MIN_FG_FRACTION <= ex["mask_fraction"] <= synthetic.MAX_FG_FRACTION
        # Untouched outside the mask, visibly changed inside.
        np.testing.assert_array_equal(ex["composite"][~fg], ex["real"][~fg])
        diff = np.abs(ex["composite"].astype(int) - ex["real"].astype(int))[fg]
        assert diff.mean() > 2.0, (ex["name"], ex["changes"])
        assert 1 <= len(ex["changes"]) <= 2
        assert ex["subset"] == "synthetic" and ex["name"].endswith("_1_1.png")


def test_regions_cover_the_frame_in_coverage_range():
    """Regions are placed anywhere: no location prior for a model to learn instead of the cue."""
    rng = np.random.default_rng(0)
    size = 32
    masks, kinds = [], []
    for _ in range(600):
        mask, kind = synthetic.sample_mask(rng, size)
        assert mask.shape == (size, size) and mask.dtype == bool
        assert synthetic.MIN_FG_FRACTION <= mask.mean() <= synthetic.MAX_FG_FRACTION
        masks.append(mask)
        kinds.append(kind)
    masks = np.array(masks)
    assert set(kinds) == set(synthetic.MASK_SHAPES)
    prior = masks.mean(0)
    centre = prior[12:20, 12:20].mean()
    corners = np.mean([prior[:8, :8].mean(), prior[:8, -8:].mean(), prior[-8:, :8].mean(),
                       prior[-8:, -8:].mean()])
    # Independent of place: a nearly flat mean mask (the old central regions gave 0.85 / 0.016).
    assert centre < 0.3 and corners > 0.04 and centre / corners < 4.0, (centre, corners)
    # Every quarter of the image holds a region's centre of mass equally often.
    cy, cx = np.array([ndimage.center_of_mass(m) for m in masks]).T / size
    quarters = np.histogram2d(cy, cx, bins=2, range=[[0, 1], [0, 1]])[0].ravel() / len(masks)
    np.testing.assert_allclose(quarters, 0.25, atol=0.05)
    # Regions are cut by the frame as in photos; groups have several separate parts.
    touches = [m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() for m in masks]
    assert 0.3 < np.mean(touches) < 0.9
    parts = [ndimage.label(m)[1] for m, k in zip(masks, kinds, strict=True) if k == "parts"]
    assert np.mean(np.array(parts) >= 2) > 0.5
    # Sizes spread over the range (log-uniform draws), not bunched.
    fractions = masks.mean((1, 2))
    assert fractions.min() < 0.07 and fractions.max() > 0.4 and np.median(fractions) < 0.2


def test_photos_load_offline():
    for name in synthetic.PHOTOS:
        photo = synthetic.load_photo(name)
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3
        assert min(photo.shape[:2]) >= 256


def test_train_and_test_regions_are_disjoint():
    rng = np.random.default_rng(0)
    for name in synthetic.PHOTOS:
        h, w = synthetic.photo_shape(name)
        region = synthetic.test_region(name)
        assert region.inside(synthetic.Box(0, 0, max(h, w))) and region.y0 + region.size <= h
        for _ in range(50):
            train = synthetic.sample_box(rng, name, "train")
            test = synthetic.sample_box(rng, name, "test")
            assert not train.intersects(region)
            assert test.inside(region)
            assert train.y0 >= 0 and train.x0 >= 0
            assert train.y0 + train.size <= h and train.x0 + train.size <= w
    # The examples record where they were cut from.
    for split in synthetic.SPLITS:
        for index in range(6):
            ex = synthetic.generate_example(split, index, image_size=SIZE, seed=0)
            region = synthetic.test_region(ex["photo"])
            assert ex["box"].inside(region) if split == "test" else not ex["box"].intersects(region)


def test_train_and_test_crops_share_one_range_of_scales():
    """Crops of both splits are 0.7-1.0 of the photo's test square's side, so that a test composite
    shows its content at the scales training saw."""
    rng = np.random.default_rng(1)
    for name in synthetic.PHOTOS:
        side = synthetic.test_region(name).size
        sizes = {split: np.array([synthetic.sample_box(rng, name, split).size for _ in range(300)])
                 for split in synthetic.SPLITS}
        for split, s in sizes.items():
            assert int(0.7 * side) <= s.min() and s.max() <= side, (name, split)
            assert s.max() - s.min() >= 0.2 * side, (name, split)  # the whole range is used
        assert abs(sizes["train"].mean() - sizes["test"].mean()) < 0.03 * side, name


def test_box_geometry():
    a = synthetic.Box(0, 0, 10)
    assert a.intersects(synthetic.Box(9, 9, 5))
    assert not a.intersects(synthetic.Box(10, 0, 5))
    assert synthetic.Box(2, 3, 4).inside(a) and not synthetic.Box(8, 8, 4).inside(a)


# ------------------------------------------------------------------------------------------------
# TFDS builder.


def test_builder_features_and_splits(data_cfg):
    builder = synthetic_builder(
        data_cfg.data_dir, image_size=SIZE, num_train=NUM_TRAIN, num_test=NUM_TEST, seed=0
    )
    assert isinstance(builder, SyntheticComposites) and builder.name == "jirl_synthetic"
    assert builder.builder_config.name == f"s{SIZE}_train{NUM_TRAIN}_test{NUM_TEST}_seed0"
    assert set(builder.info.features.keys()) == set(data.composite_features().keys())
    assert builder.info.splits["train"].num_examples == NUM_TRAIN
    assert builder.info.splits["test"].num_examples == NUM_TEST
    source = builder.as_data_source(split="test")
    assert len(source) == NUM_TEST
    for index in (0, NUM_TEST - 1):
        record = source[index]
        chex.assert_shape(record["composite"], (SIZE, SIZE, 3))
        chex.assert_shape(record["real"], (SIZE, SIZE, 3))
        chex.assert_shape(record["mask"], (SIZE, SIZE, 1))
        assert record["composite"].dtype == record["mask"].dtype == np.uint8
        # Lossless and in generation order.
        ex = synthetic.generate_example("test", index, image_size=SIZE, seed=0)
        for key in ("composite", "mask", "real"):
            np.testing.assert_array_equal(record[key], ex[key])
        assert record["name"].decode() == ex["name"]
        assert record["subset"].decode() == "synthetic"
        assert record["mask_fraction"] == pytest.approx(ex["mask_fraction"], abs=1e-6)


def test_builder_reuses_cache_and_separates_configs(data_cfg, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("regenerated although the data was cached")

    with monkeypatch.context() as patch:
        patch.setattr(synthetic, "generate_example", fail)
        builder = synthetic_builder(
            data_cfg.data_dir, image_size=SIZE, num_train=NUM_TRAIN, num_test=NUM_TEST, seed=0
        )
        assert len(builder.as_data_source(split="train")) == NUM_TRAIN
    other = synthetic_builder(data_cfg.data_dir, image_size=16, num_train=2, num_test=1, seed=3)
    assert other.data_dir != builder.data_dir
    assert len(other.as_data_source(split="train")) == 2


def test_builder_config_validation_and_pickling(tmp_path):
    with pytest.raises(ValueError, match="num_train"):
        synthetic_builder(str(tmp_path), num_train=0, prepare=False)
    # Grain workers unpickle the data source, which re-creates the builder (default config too).
    for kwargs in ({}, dict(image_size=16, num_train=2, num_test=1)):
        builder = synthetic_builder(str(tmp_path), prepare=False, **kwargs)
        clone = pickle.loads(pickle.dumps(builder))
        assert clone.builder_config.name == builder.builder_config.name


# ------------------------------------------------------------------------------------------------
# Pipeline.


def test_load_source_rejects_unknown_source(data_cfg):
    cfg = data_cfg.copy_and_resolve_references()
    cfg.source = "nope"
    with pytest.raises(ValueError, match="synthetic, ihd, folder"):
        data.load_source(cfg, "train")
    cfg.source = "ihd"
    with pytest.raises(FileNotFoundError, match="data.ihd.manual_dir"):
        data.load_source(cfg, "train")
    with pytest.raises(ValueError, match="split 'validation' is unknown; use one of train, val, test"):
        data.load_source(data_cfg, "validation")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("source", "nope", r"data.source='nope' is invalid: it must be one of synthetic, ihd, folder"),
        ("crop_size", 0, r"data.crop_size=0 is invalid: it must be an int >= 1"),
        ("crop_size", 2.5, r"data.crop_size=2.5 is invalid"),
        (
            "validation_fraction",
            1.0,
            r"data.validation_fraction=1.0 is invalid: it must be a number in \[0, 1\)",
        ),
        ("validation_fraction", -0.1, r"data.validation_fraction=-0.1 is invalid"),
        ("validation_seed", -1, r"data.validation_seed=-1 is invalid"),
        ("std", (1.0, 0.0, 1.0), r"data.std=\(1.0, 0.0, 1.0\) is invalid: it must be three numbers > 0"),
        ("mean", (0.5, 0.5), r"data.mean=\(0.5, 0.5\) is invalid"),
        ("num_workers", -1, r"data.num_workers=-1 is invalid"),
        ("num_train", 0, r"data.num_train=0 is invalid: it must be an int >= 1"),
        ("image_size", 8, r"data.image_size=8 is invalid: it must be an int >= 16"),
        ("preprocess", "none", r"data.preprocess='none' is invalid: it must be one of crop, resize"),
    ],
)
def test_validate_data_config_names_the_bad_key(key, value, message, tmp_path):
    cfg = data_config().to_dict()  # A plain dict takes any value (a ConfigDict is type-safe).
    # Tiny and local, should a broken check let the pipeline prepare data.
    cfg.update(data_dir=str(tmp_path), image_size=16, num_train=2, num_test=1)
    data.validate_data_config(cfg)  # The defaults are valid.
    cfg[key] = value
    with pytest.raises(ValueError, match=message):
        data.validate_data_config(cfg)
    with pytest.raises(ValueError, match=message):  # The pipeline's entry points check it.
        data.steps_per_epoch(cfg, 2)


def test_validate_data_config_source_keys_and_missing_keys():
    cfg = data_config()
    del cfg["crop_size"]
    with pytest.raises(
        ValueError, match=r"data.crop_size is missing from the config; add it .*data_config\(\)"
    ):
        data.validate_data_config(cfg)
    cfg = data_config().to_dict()
    cfg["source"] = "ihd"
    cfg["ihd"]["config"] = "le51"
    with pytest.raises(ValueError, match=r"data.ihd.config='le51' is invalid: it must be one of le50, all, "):
        data.load_source(cfg, "train")
    cfg["ihd"]["config"] = "HCOCO"
    cfg["ihd"]["strict_counts"] = "yes"
    with pytest.raises(
        ValueError, match=r"data.ihd.strict_counts='yes' is invalid: it must be True or False"
    ):
        data.validate_data_config(cfg)
    del cfg["ihd"]["strict_counts"]
    with pytest.raises(ValueError, match="data.ihd.strict_counts is missing"):
        data.validate_data_config(cfg)
    # Keys of other sources are not required.
    cfg = data_config().to_dict()
    cfg["source"] = "folder"
    del cfg["num_train"], cfg["ihd"]
    data.validate_data_config(cfg)
    del cfg["folder"]["train"]
    with pytest.raises(ValueError, match="data.folder.train is missing"):
        data.validate_data_config(cfg)


def test_public_names():
    from jirl.data import composites, ihd_lists, images

    assert all(hasattr(data, name) for name in data.__all__)
    assert not hasattr(data, "default_data_config")  # defaults live in configs/default.py
    assert data.load_rgb is images.load_rgb and data.BadImageError is images.BadImageError
    assert callable(composites.load_triplet) and callable(ihd_lists.split_lists)
    assert data.SPLITS == ("train", "val", "test")


def test_default_data_dir(monkeypatch):
    cfg = data_config()
    monkeypatch.delenv("JIRL_DATA_DIR", raising=False)
    assert schema.resolve_data_dir(cfg).endswith(".cache/jirl/tensorflow_datasets")
    monkeypatch.setenv("JIRL_DATA_DIR", "/somewhere")
    assert schema.resolve_data_dir(cfg) == "/somewhere"
    cfg.data_dir = "/explicit"
    assert schema.resolve_data_dir(cfg) == "/explicit"


def test_steps_per_epoch(data_cfg):
    # The reduced train split (prepared train minus "val") sets the epoch.
    assert len(data.load_source(data_cfg, "train")) == TRAIN
    assert data.steps_per_epoch(data_cfg, 4) == TRAIN // 4 == 3
    assert data.steps_per_epoch(data_cfg, 4, process_count=2) == TRAIN // 8
    assert data.steps_per_epoch(data_cfg, TRAIN) == 1
    with pytest.raises(ValueError, match="global batch"):
        data.steps_per_epoch(data_cfg, TRAIN + 1)


def check_batch(batch: dict, batch_size: int):
    chex.assert_shape(batch["image"], (batch_size, CROP, CROP, 3))
    chex.assert_shape(batch["real"], (batch_size, CROP, CROP, 3))
    chex.assert_shape(batch["mask"], (batch_size, CROP, CROP, 1))
    chex.assert_type([batch["image"], batch["real"], batch["mask"]], np.float32)
    chex.assert_tree_all_finite([batch["image"], batch["real"], batch["mask"]])
    for key in ("image", "real", "mask"):  # contiguous: Grain workers pass it via shared memory
        assert batch[key].flags.c_contiguous, key
    assert set(np.unique(batch["mask"])) <= {0.0, 1.0}
    low, high = (0 - MEAN) / STD - 1e-5, (1 - MEAN) / STD + 1e-5
    for key in ("image", "real"):
        assert np.all(batch[key] >= low) and np.all(batch[key] <= high), key
    for key in ("subset", "name"):
        assert batch[key].shape == (batch_size,) and batch[key].dtype.kind == "U"


def test_train_batches_shapes_and_values(data_cfg):
    batches = take(data.train_batches(data_cfg, batch_size=4, seed=0), 4)
    for batch in batches:
        check_batch(batch, 4)
        assert set(batch) == {"image", "mask", "real", "subset", "name"}
        assert np.all(batch["subset"] == "synthetic")
        # Foreground survives the augmentation (re-draw rule) and image != real inside it.
        assert np.all(batch["mask"].sum(axis=(1, 2, 3)) > 0)
        assert np.any(batch["image"] != batch["real"])


def test_train_batches_are_deterministic_and_epochs_differ(data_cfg):
    steps = data.steps_per_epoch(data_cfg, 4)
    a = take(data.train_batches(data_cfg, batch_size=4, seed=0), 2 * steps)
    b = take(data.train_batches(data_cfg, batch_size=4, seed=0), 2 * steps)
    assert_batches_equal(a, b)
    c = take(data.train_batches(data_cfg, batch_size=4, seed=1), 2 * steps)
    assert any(not np.array_equal(x["name"], y["name"]) for x, y in zip(a, c, strict=True))
    epochs = [np.concatenate([x["name"] for x in a[e * steps : (e + 1) * steps]]) for e in (0, 1)]
    for names in epochs:  # each epoch is a permutation of the whole (divisible) training set
        assert sorted(names) == sorted(set(names)) and len(names) == TRAIN
    assert not np.array_equal(epochs[0], epochs[1])


def test_train_batches_resume_from_start_step(data_cfg):
    stream = take(data.train_batches(data_cfg, batch_size=4, seed=5), 8)
    resumed = take(data.train_batches(data_cfg, batch_size=4, seed=5, start_step=5), 3)
    assert_batches_equal(resumed, stream[5:])


def test_process_shards_are_disjoint_and_cover_the_global_batch(data_cfg):
    whole = take(data.train_batches(data_cfg, batch_size=4, seed=2), 4)
    shards = [
        take(data.train_batches(data_cfg, batch_size=2, seed=2, process_index=p, process_count=2), 4)
        for p in range(2)
    ]
    for step, batch in enumerate(whole):
        names = [shard[step]["name"] for shard in shards]
        assert not set(names[0]) & set(names[1])
        joined = {k: np.concatenate([shard[step][k] for shard in shards]) for k in batch}
        assert_batches_equal([joined], [batch])


def test_eval_batches_pad_the_last_batch(data_cfg):
    batches = list(data.eval_batches(data_cfg, "test", batch_size=2))
    assert len(batches) == 3 == data.num_eval_batches(data_cfg, "test", batch_size=2)
    for batch in batches:
        check_batch(batch, 2)
        assert batch["valid"].dtype == bool
    np.testing.assert_array_equal(np.concatenate([b["valid"] for b in batches]), [True] * NUM_TEST + [False])
    last = batches[-1]
    assert last["name"][1] == "" and not np.any(last["image"][1]) and not np.any(last["mask"][1])
    names = np.concatenate([b["name"] for b in batches])[:NUM_TEST]
    assert [int(n.split("-test")[1][:6]) for n in names] == list(range(NUM_TEST))
    assert_batches_equal(batches, list(data.eval_batches(data_cfg, "test", batch_size=2)))


def test_eval_batches_shard_over_processes(data_cfg):
    single = list(data.eval_batches(data_cfg, "test", batch_size=4))
    shards = [
        list(data.eval_batches(data_cfg, "test", batch_size=2, process_index=p, process_count=2))
        for p in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == len(single) == 2
    for step, batch in enumerate(single):
        joined = {k: np.concatenate([shard[step][k] for shard in shards]) for k in batch}
        assert_batches_equal([joined], [batch])


def test_eval_resize_matches_direct_transform(data_cfg):
    record = data.load_source(data_cfg, "test")[0]
    batch = next(data.eval_batches(data_cfg, "test", batch_size=1))
    mask = transforms.resize_bilinear(record["mask"] / 255.0, CROP, CROP) > 0.5
    np.testing.assert_array_equal(batch["mask"][0], mask.astype(np.float32))
    # the official test path: cv2.resize's uint8 bytes, then ToTensor + Normalize in float32
    cv2 = pytest.importorskip("cv2")
    image = cv2.resize(np.asarray(record["composite"]), (CROP, CROP)).astype(np.float32)
    expected = (image / np.float32(255) - np.float32(MEAN)) / np.float32(STD)
    np.testing.assert_array_equal(batch["image"][0], expected)


def test_multiprocess_workers_match_in_process(data_cfg):
    """Grain worker processes outside absl.app: same stream, and the caller's flags stay as they were."""
    parsed = flags.FLAGS.is_parsed()
    cfg = data_cfg.copy_and_resolve_references()
    cfg.num_workers = 2
    with_workers = take(data.train_batches(cfg, batch_size=2, seed=0, start_step=3), 3)
    in_process = take(data.train_batches(data_cfg, batch_size=2, seed=0, start_step=3), 3)
    assert_batches_equal(with_workers, in_process)
    assert flags.FLAGS.is_parsed() == parsed
    assert not flags.FLAGS["grain_enable_multiprocess_worker_profiling"].present


# ------------------------------------------------------------------------------------------------
# Transforms.


@pytest.mark.parametrize(
    "shape, size",
    [
        ((7, 9), (17, 13)),  # 2-D, upscaling by non-integer ratios
        ((23, 31), (10, 14)),  # 2-D, downscaling by non-integer ratios
        ((7, 9, 3), (11, 20)),  # 3-channel, upscaling
        ((29, 17, 3), (12, 7)),  # 3-channel, downscaling
        ((13, 11, 3), (8, 19)),  # 3-channel, down in height, up in width
    ],
)
def test_resize_bilinear_matches_opencv(shape, size):
    """Against OpenCV itself (cv2.INTER_LINEAR: half-pixel centres, edge clamping, no antialiasing)."""
    cv2 = pytest.importorskip("cv2")
    height, width = size
    image = np.random.default_rng(sum(shape)).uniform(0, 255, shape).astype(np.float32)
    expected = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    ours = transforms.resize_bilinear(image if image.ndim == 3 else image[..., None], height, width)
    chex.assert_shape(ours, (height, width, shape[2] if len(shape) == 3 else 1))
    chex.assert_trees_all_close(ours.reshape(expected.shape), expected, atol=1e-5 * 255, rtol=1e-5)
    # uint8, as the transforms resize photos: cv2 interpolates uint8 in fixed point (11-bit
    # weights, its SIMD rounding); resize_u8 gives the same bytes
    pixels = np.random.default_rng(len(shape)).integers(0, 256, shape, dtype=np.uint8)
    expected = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR)
    ours = transforms.resize_u8(pixels if pixels.ndim == 3 else pixels[..., None], height, width)
    np.testing.assert_array_equal(ours.reshape(expected.shape), expected)


@pytest.mark.parametrize("size", [(180, 300, 256, 256), (500, 333, 224, 224), (37, 53, 224, 224),
                                  (1, 5, 32, 32), (3000, 2000, 224, 224), (64, 64, 32, 48)])
def test_resize_u8_is_bit_exact_with_opencv(size):
    """Photos to model sizes and back up, the sizes inference and the official test path meet."""
    cv2 = pytest.importorskip("cv2")
    h, w, height, width = size
    pixels = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    np.testing.assert_array_equal(transforms.resize_u8(pixels, height, width),
                                  cv2.resize(pixels, (width, height)))


def test_resize_bilinear_same_size_is_identity():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = transforms.resize_bilinear(image, 5, 7)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, image)


def test_random_resized_crop_box_ranges():
    rng = np.random.default_rng(0)
    for _ in range(200):
        y0, x0, h, w = transforms.random_resized_crop_box(rng, 48, 64, (0.9, 1.0), (3 / 4, 4 / 3))
        assert 0 <= y0 and y0 + h <= 48 and 0 <= x0 and x0 + w <= 64
        assert 0.85 * 48 * 64 <= h * w <= 48 * 64 + 64
        assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05


def _corner_record(size: int = 48, blob: int = 4) -> dict:
    rng = np.random.default_rng(0)
    mask = np.zeros((size, size, 1), np.uint8)
    mask[:blob, :blob] = 255
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return {"composite": image, "real": image, "mask": mask, "subset": b"s", "name": b"n"}


def test_augmentation_keeps_mask_binary_and_applies_redraw_rule():
    record = _corner_record()
    counts = {}
    for label, kwargs in {
        "redraw": dict(keep_any_prob=0.0),
        "no_redraw": dict(keep_any_prob=0.0, max_redraws=0),
        "keep_any": dict(keep_any_prob=1.0),
    }.items():
        cfg = transforms.AugmentConfig(crop_size=48, **kwargs)
        out = [transforms.train_transform(record, np.random.default_rng(seed), cfg) for seed in range(100)]
        for ex in out:
            assert set(np.unique(ex["mask"])) <= {0.0, 1.0}
            chex.assert_shape([ex["image"], ex["real"]], (48, 48, 3))
        counts[label] = np.array([int(ex["mask"].sum()) for ex in out])
    # The corner object is often cropped away (<= 10 pixels left) without re-draws ...
    assert np.mean(counts["no_redraw"] <= 10) > 0.2
    # ... never with them; and a 'keep any' coin that always fires disables them.
    assert np.all(counts["redraw"] > 10)
    np.testing.assert_array_equal(counts["keep_any"], counts["no_redraw"])


def test_redraws_are_capped_for_empty_masks():
    record = _corner_record()
    record["mask"] = np.zeros_like(record["mask"])
    cfg = transforms.AugmentConfig(crop_size=32, keep_any_prob=0.0, max_redraws=5)
    ex = transforms.train_transform(record, np.random.default_rng(0), cfg)
    assert not np.any(ex["mask"])


def test_resize_preprocess_is_rainnets_pil_resize_without_crop_or_flip():
    """preprocess="resize": PIL's antialiased bilinear for the images (one lit column in three,
    shrunk 3x, averages to a third of white, where the crop path's two-tap cv2-style bilinear
    samples only the dark columns), PIL's nearest for the mask (source pixel
    floor((i + 0.5) * scale)), the same output for training and evaluation and any random draw."""
    lines = np.zeros((64, 48, 3), np.uint8)
    lines[:, ::3] = 255
    mask = np.zeros((64, 48, 1), np.uint8)
    mask[5:40, 7:30] = 255
    record = {"composite": lines, "real": 255 - lines, "mask": mask, "subset": "s", "name": "n"}
    cfg = transforms.AugmentConfig(crop_size=16, mean=(0.0,) * 3, std=(1.0,) * 3,
                                   preprocess="resize")
    out = transforms.train_transform(record, np.random.default_rng(0), cfg)
    chex.assert_shape([out["image"], out["real"]], (16, 16, 3))
    chex.assert_shape(out["mask"], (16, 16, 1))
    np.testing.assert_allclose(out["image"][:, 1:-1] * 255, 85, atol=2)  # edges: fewer taps
    cropped = transforms.eval_transform(record, transforms.AugmentConfig(
        crop_size=16, mean=(0.0,) * 3, std=(1.0,) * 3))
    assert np.max(cropped["image"]) == 0.0  # the crop path's resize aliases
    np.testing.assert_array_equal(out["mask"][..., 0], mask[2::4, 1::3, 0] > 0)
    for other in (transforms.train_transform(record, np.random.default_rng(7), cfg),
                  transforms.eval_transform(record, cfg)):
        for k in ("image", "mask", "real"):
            np.testing.assert_array_equal(other[k], out[k])
    with pytest.raises(ValueError, match="data.preprocess='none'; use one of"):
        transforms.AugmentConfig(preprocess="none")

"""The trivial baselines every evaluation reports (jirl.training.baselines) and the contact sheet."""

from __future__ import annotations

import chex
import numpy as np
import pytest
from jirl.configs.default import data_config

from jirl import visualize
from jirl.data import synthetic
from jirl.training import baselines

SIZE = 32


@pytest.fixture(scope="module")
def data_cfg(tmp_path_factory):
    cfg = data_config()
    cfg.data_dir = str(tmp_path_factory.mktemp("tfds"))
    cfg.image_size = SIZE
    cfg.crop_size = SIZE  # evaluation's resize is the identity: the generator's masks are the reference
    cfg.num_train = 10
    cfg.num_test = 2
    cfg.validation_fraction = 0.0  # "train" is generator examples 0..9
    return cfg


def _generator_masks(indices) -> np.ndarray:
    return np.array([synthetic.generate_example("train", int(i), image_size=SIZE)["mask"]
                     for i in indices], np.float64) / 255.0


def test_mean_training_mask_is_the_mean_of_the_training_masks(data_cfg):
    base = baselines.mean_training_mask(data_cfg)
    chex.assert_shape(base.mean_mask, (SIZE, SIZE, 1))
    assert base.examples == 10
    np.testing.assert_allclose(base.mean_mask, _generator_masks(range(10)).mean(0), atol=1e-6)


def test_mean_training_mask_spreads_a_limited_number_of_examples(data_cfg):
    base = baselines.mean_training_mask(data_cfg, max_examples=3)
    assert base.examples == 3
    # Evenly spread over the split (first, middle, last), not its first three.
    np.testing.assert_allclose(base.mean_mask, _generator_masks([0, 4, 9]).mean(0), atol=1e-6)


def test_summary_reads_centre_and_corners():
    m = np.full((16, 16, 1), 0.1, np.float32)
    m[7:9, 7:9] = 0.9
    m[:2, :2] = m[-2:, -2:] = 0.5
    summary = baselines.Baselines(m, 4).summary()
    assert summary["examples"] == 4
    assert summary["centre"] == pytest.approx(0.9)
    assert summary["corners"] == pytest.approx((0.5 + 0.1 + 0.1 + 0.5) / 4)


def _square(y, x, side=8, size=SIZE):
    m = np.zeros((size, size, 1), np.float32)
    m[y:y + side, x:x + side] = 1.0
    return m


@pytest.mark.parametrize("normalize", [True, False])
def test_all_foreground_scores_the_area_fraction(normalize):
    target = np.stack([_square(0, 0), _square(4, 4, side=16)])
    f = target.mean((1, 2, 3))
    scores = baselines.score(baselines.Baselines(np.zeros((SIZE, SIZE, 1), np.float32), 1),
                             target, np.ones(2, bool), normalize)[baselines.ALL_FOREGROUND]
    np.testing.assert_allclose(scores["ap"], f, rtol=1e-6)
    np.testing.assert_allclose(scores["iou"], f, rtol=1e-5)
    np.testing.assert_allclose(scores["f1"], 2 * f / (1 + f), rtol=1e-5)


def test_mean_mask_prior_rewards_regions_where_the_prior_is():
    prior = 0.2 * _square(0, 0) + 0.05  # the training regions sat in the top-left corner
    target = np.stack([_square(0, 0), _square(20, 20), _square(0, 0)])
    valid = np.array([True, True, False])
    scores = baselines.score(baselines.Baselines(prior, 5), target, valid, True)[baselines.MEAN_MASK]
    np.testing.assert_allclose(scores["iou"], [1.0, 0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(scores["f1"], [1.0, 0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(scores["ap"][:2], [1.0, 64 / 1024], rtol=1e-5)
    assert scores["ap"][2] == 0.0  # padding rows are zeroed


def test_region_offset():
    assert visualize.region_offset(_square(12, 12)) == pytest.approx(0.0)
    assert visualize.region_offset(_square(0, 0)) == pytest.approx(np.hypot(0.375, 0.375))
    assert np.isnan(visualize.region_offset(np.zeros((8, 8, 1))))


def test_contact_sheet_places_tiles_with_gaps():
    a = np.zeros((4, 5, 3), np.float32)
    b = np.ones((4, 5, 1), np.float32)
    sheet = visualize.contact_sheet([(a, b), (b, a)], gap=1)
    chex.assert_shape(sheet, (2 * 5 + 1, 2 * 6 + 1, 3))
    assert sheet.dtype == np.uint8
    np.testing.assert_array_equal(sheet[1:5, 1:6], 0)
    np.testing.assert_array_equal(sheet[1:5, 7:12], 255)
    np.testing.assert_array_equal(sheet[6:10, 1:6], 255)
    np.testing.assert_array_equal(sheet[6:10, 7:12], 0)
    np.testing.assert_array_equal(sheet[5], 255)  # the gap row
    with pytest.raises(ValueError, match="expected"):
        visualize.contact_sheet([(a, np.zeros((3, 5, 3)))])
    # Enlarged 3x by pixel repetition: every source pixel becomes a 3x3 block.
    c = np.arange(4 * 5, dtype=np.float32).reshape(4, 5, 1) / 19.0
    big = visualize.contact_sheet([(c,)], gap=0, scale=3)
    chex.assert_shape(big, (12, 15, 3))
    expected = np.round(c[..., 0] * 255).astype(np.uint8)
    for dy in range(3):
        for dx in range(3):
            np.testing.assert_array_equal(big[dy::3, dx::3, 1], expected)

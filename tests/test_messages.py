"""Messages that name the thing: a missing photo's path, a --config.key typo's nearest key, an
official recipe scored on other data, a harmonizer without real images, the public API."""

import subprocess
import sys

import pytest
from jirl.configs import dirl as dirl_config
from jirl_testing import tiny_rainnet_config
from PIL import Image

import jirl
from jirl.data.images import BadImageError, MissingFileError, as_rgb
from jirl.inference import as_mask
from jirl.models import build_model
from jirl.runtime.flags import override_problem
from jirl.training.recipe import check_real_images, data_warnings


def test_a_missing_or_broken_photo_or_mask_names_its_file(tmp_path):
    with pytest.raises(MissingFileError, match=f"^{tmp_path / 'nope.jpg'}: missing file"):
        as_rgb(tmp_path / "nope.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(BadImageError, match=f"^{tmp_path / 'notes.txt'}: cannot decode"):
        as_rgb(str(tmp_path / "notes.txt"))
    with pytest.raises(MissingFileError, match=f"^{tmp_path / 'm.png'}: missing file"):
        as_mask(str(tmp_path / "m.png"), (4, 4))


def test_a_config_key_typo_names_the_nearest_key():
    argv = ["jirl train", "--config", "dirl:quick", "--config.seed=1", "--config.batchsize=4"]
    assert override_problem(argv) == ("--config.batchsize: the config has no key 'batchsize'; "
                                      "did you mean --config.batch_size?")
    assert override_problem(["x", "--config=dirl", "--config.model.ggd=4"]) == (
        "--config.model.ggd: the config has no key 'ggd' under model; did you mean "
        "--config.model.ggd_ch?")
    assert override_problem(["x", "--config=dirl", "--config.model.ggd_ch=4"]) is None
    assert override_problem(["x", "--config.seed=1"]) is None  # no config named


def test_a_typo_on_the_command_line_is_one_line_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "jirl", "train", "--config", "dirl:quick",
                           "--config.modle.stem_features=4"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "jirl train: --config.modle.stem_features: the config has no key 'modle'; did you mean "
        "--config.model.stem_features?")


def test_an_official_recipe_scored_on_other_data_is_said():
    official = dirl_config.get_config()
    (warning,) = data_warnings(official)
    assert "the official dirl recipe is scored on iHarmony4" in warning
    assert "config.data.source is 'synthetic' (the embedded synthetic data)" in warning
    assert "--config.data.source=ihd" in warning
    official.data.source = "ihd"
    assert data_warnings(official) == []
    assert data_warnings(dirl_config.get_config("quick")) == []  # quick is not a publication's


def test_a_harmonizer_refuses_a_folder_without_real_images(tmp_path):
    """Without real images the composite stands in for them: the harmonizer would learn to
    change nothing. A localizer on the same folder is fine."""
    for name in ("a", "b"):
        Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / f"{name}.jpg")
        Image.new("L", (40, 40), 255).save(tmp_path / f"{name}_mask.png")
    Image.new("RGB", (40, 40), (30, 30, 200)).save(tmp_path / "a_real.jpg")
    config = tiny_rainnet_config()
    config.data.source = "folder"
    config.data.folder.train = str(tmp_path)
    spec, _ = build_model(config)
    with pytest.raises(ValueError, match=r"rainnet turns a composite into its real image, but 1 of "
                                         r"2 examples in .* have no real image \(e.g. b.jpg; "
                                         r"expected name_real.jpg beside name.jpg\)"):
        check_real_images(spec, config, "train")
    Image.new("RGB", (40, 40), (30, 30, 200)).save(tmp_path / "b_real.jpg")
    check_real_images(spec, config, "train")  # every example has its real image now


def test_dir_lists_the_public_api():
    public = [name for name in dir(jirl) if not name.startswith("_")]
    assert {"Localizer", "Harmonizer", "binary_mask", "load_checkpoint"} <= set(public)
    assert jirl.__all__ == ["Localizer", "Harmonizer", "binary_mask", "load_checkpoint", "__version__"]
    assert jirl.binary_mask is jirl.inference.binary_mask

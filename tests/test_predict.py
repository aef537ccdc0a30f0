"""jirl.Localizer / jirl.Harmonizer and predict.py on users' photos (tiny models, small photos)."""

import json
import os

import chex
import cv2
import numpy as np
import pytest
from jirl_testing import run, subprocess_env, tiny_checkpoint, tiny_dirl_config, tiny_rainnet_config
from PIL import Image, ImageOps

from jirl import inference, visualize
from jirl.data import transforms
from jirl.predict import Predictor, find_photos
from jirl.runtime.checkpoints import CheckpointError


@pytest.fixture(scope="module")
def dirl(tmp_path_factory):
    config = tiny_dirl_config()
    path, model, variables = tiny_checkpoint(tmp_path_factory.mktemp("dirl"), config)
    return path, config, model, variables


@pytest.fixture(scope="module")
def rainnet(tmp_path_factory):
    config = tiny_rainnet_config()
    path, model, variables = tiny_checkpoint(tmp_path_factory.mktemp("rainnet"), config)
    return path, config, model, variables


@pytest.fixture(scope="module")
def localizer(dirl):
    return inference.Localizer.from_checkpoint(dirl[0], dtype="float32")


def _photo(h, w, seed=0):
    rng = np.random.default_rng(seed)
    smooth = cv2.resize(rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), np.uint8), (w, h))
    return np.clip(smooth.astype(int) + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


def test_train_policy_is_eval_pys_path_and_the_map_comes_back_at_the_photos_size(localizer, dirl):
    """resize="train": the photo resized and normalized as eval.py's transform does it, the model's
    mask, and that map resized to the photo by OpenCV's bilinear (the official protocol)."""
    _, config, model, variables = dirl
    photo = _photo(45, 70)
    record = {"composite": photo, "real": photo, "mask": np.zeros((45, 70, 1), np.uint8)}
    example = transforms.eval_transform(
        record, transforms.AugmentConfig.from_data_config(config.data))
    expected = np.asarray(model.apply(variables, example["image"][None], train=False)["mask"])[0]
    assert expected.std() > 1e-3  # a map that varies, so that a resize mistake shows
    plan, x = localizer.prepare(photo)
    assert plan == inference.Plan((45, 70), (32, 32), (32, 32))
    at_model_size = localizer.run(x[None])["mask"][0]
    np.testing.assert_allclose(at_model_size, expected[..., 0], atol=1e-6)
    mask = localizer(photo)
    chex.assert_shape(mask, (45, 70))
    chex.assert_type(mask, np.float32)
    np.testing.assert_allclose(mask, cv2.resize(expected[..., 0], (70, 45)), atol=1e-6)
    # smaller than the model's input: the map shrinks without antialiasing, as OpenCV's does
    small = localizer.run(localizer.prepare(photo[:20, :27])[1][None])["mask"][0]
    np.testing.assert_allclose(localizer(photo[:20, :27]), cv2.resize(small, (27, 20)), atol=1e-6)


@pytest.mark.parametrize("policy,long_side", [("native", None), ("long_side", 64)])
def test_native_and_long_side_keep_the_photos_size_and_compile_once_per_bucket(dirl, policy, long_side):
    loc = inference.Localizer.from_checkpoint(dirl[0], resize=policy, long_side=long_side,
                                              dtype="float32")  # bf16 compiles 3x longer on CPU
    sizes = [(45, 70), (70, 45), (50, 70), (33, 64), (1, 5), (130, 20)]
    for h, w in sizes:
        mask = loc(_photo(h, w, seed=h))
        chex.assert_shape(mask, (h, w))
        assert np.isfinite(mask).all() and 0 <= mask.min() and mask.max() <= 1
    assert loc.compilations == len({loc.plan(h, w).padded for h, w in sizes}) < len(sizes)


def test_native_on_a_bucket_sized_photo_is_the_plain_model(localizer, dirl):
    _, config, model, variables = dirl
    loc = inference.Localizer(localizer.loaded, resize="native")
    photo = _photo(64, 96)
    mean, std = np.asarray(config.data.mean), np.asarray(config.data.std)
    x = ((photo / 255.0 - mean) / std).astype(np.float32)
    expected = np.asarray(model.apply(variables, x[None], train=False)["mask"])[0, ..., 0]
    np.testing.assert_allclose(loc(photo), np.clip(expected, 0, 1), atol=1e-5)
    # a photo short of its bucket is padded by reflection (numpy's), and the map cropped back
    photo = photo[:50, :75]
    assert loc.plan(50, 75) == inference.Plan((50, 75), (50, 75), (64, 96))
    x = np.pad(((photo / 255.0 - mean) / std).astype(np.float32), [(0, 14), (0, 21), (0, 0)],
               mode="reflect")
    expected = np.asarray(model.apply(variables, x[None], train=False)["mask"])[0, :50, :75, 0]
    np.testing.assert_allclose(loc(photo), np.clip(expected, 0, 1), atol=1e-5)


def test_bucket_sides_are_bounded_multiples_of_32():
    sides = [inference.bucket_side(n) for n in range(1, 4097)]
    assert all(s % 32 == 0 and s >= n for n, s in enumerate(sides, 1))
    assert all(s <= max(32 * (n // 32 + 1), 1.25 * n + 32) for n, s in enumerate(sides, 1))
    assert len(set(sides)) <= 24 and inference.bucket_side(256) == 256
    with pytest.raises(ValueError, match=">= 1"):
        inference.bucket_side(0)


def test_inputs_of_every_kind_give_the_same_mask(localizer, tmp_path):
    """A path, a PIL image, uint8 / float / uint16 arrays, grey and RGBA, an EXIF-rotated JPEG."""
    photo = _photo(40, 60)
    expected = localizer(photo)
    Image.fromarray(photo).save(tmp_path / "p.png")
    np.testing.assert_array_equal(localizer(str(tmp_path / "p.png")), expected)
    np.testing.assert_array_equal(localizer(Image.fromarray(photo)), expected)
    np.testing.assert_array_equal(localizer(photo / 255.0), expected)
    np.testing.assert_array_equal(localizer(photo.astype(np.uint16) * 257), expected)
    rgba = np.concatenate([photo, np.full((40, 60, 1), 7, np.uint8)], -1)
    np.testing.assert_array_equal(localizer(rgba), expected)
    grey = photo[..., 0]
    np.testing.assert_array_equal(localizer(grey), localizer(np.repeat(grey[..., None], 3, -1)))
    # EXIF orientation 6: stored 40 x 60, shown (and predicted) 60 x 40
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "rot.jpg")))
    mask = localizer(str(tmp_path / "rot.jpg"))
    chex.assert_shape(mask, (60, 40))
    np.testing.assert_array_equal(mask, localizer(upright))
    # a batch of same-size photos is one call with the single answers
    np.testing.assert_allclose(localizer([photo, photo[::-1]]), np.stack([expected, localizer(photo[::-1])]),
                               atol=1e-6)
    with pytest.raises(ValueError, match="same size"):
        localizer([photo, photo[:, :30]])
    for bad, message in [(np.zeros((4, 4, 2), np.uint8), "shape"), (photo * 2.0, r"\[0, 1\]"),
                         (photo.astype(np.int64), "dtype")]:
        with pytest.raises(inference.jimages.BadImageError, match=message):
            localizer(bad)


def test_checkpoint_errors_name_the_fix(dirl, rainnet, tmp_path):
    import jirl

    assert jirl.Localizer is inference.Localizer and jirl.Harmonizer is inference.Harmonizer
    with pytest.raises(ValueError, match="harmonization model, not a localizer"):
        inference.Localizer.from_checkpoint(rainnet[0])
    with pytest.raises(ValueError, match="localization model, not a harmonizer"):
        inference.Harmonizer.from_checkpoint(dirl[0])
    path, _, _ = tiny_checkpoint(tmp_path / "bare", tiny_dirl_config(), with_config=False)
    with pytest.raises(CheckpointError, match="records no config"):
        inference.Localizer.from_checkpoint(path)
    assert inference.Localizer.from_checkpoint(path, config=tiny_dirl_config()).train_size == 32
    # a checkpoint saved before data.preprocess existed is read as the "crop" preprocessing
    path, _, _ = tiny_checkpoint(tmp_path / "old", tiny_dirl_config(), drop_data_keys=("preprocess",))
    old = inference.Localizer.from_checkpoint(path, dtype="float32")
    assert old.augment.preprocess == "crop" and old(_photo(20, 30)).shape == (20, 30)
    with pytest.raises(ValueError, match="long_side"):
        inference.Localizer.from_checkpoint(dirl[0], resize="native", long_side=64)


def test_harmonizer_keeps_the_background_and_equals_the_model_at_its_own_size(rainnet):
    """At the harmonizer's size the result is its harmonized image (8 bits); at any size the
    pixels outside the mask are the photo's, byte for byte."""
    path, config, model, variables = rainnet
    harmonizer = inference.Harmonizer.from_checkpoint(path)
    photo = _photo(32, 32, seed=3)
    region = np.zeros((32, 32), bool)
    region[8:24, 4:20] = True
    mean, std = np.asarray(config.data.mean), np.asarray(config.data.std)
    x = ((photo / 255.0 - mean) / std).astype(np.float32)[None]
    out = model.apply(variables, x, train=False, mask=region[None, ..., None].astype(np.float32))
    expected = np.asarray(out["harmonized"])[0] * std + mean
    got = harmonizer(photo, region)
    chex.assert_type(got, np.uint8)
    diff = np.abs(got.astype(int) - np.rint(np.clip(expected, 0, 1) * 255))
    assert diff.max() <= 1 and diff[region].mean() < 0.05
    assert np.abs(got[region].astype(int) - photo[region]).mean() > 1  # the region did change
    big = _photo(90, 140, seed=4)
    mask = np.zeros((90, 140), bool)
    mask[20:70, 30:100] = True
    result = harmonizer(big, mask)
    np.testing.assert_array_equal(result[~mask], big[~mask])
    assert np.abs(result[mask].astype(int) - big[mask]).mean() > 1
    np.testing.assert_array_equal(harmonizer(big, np.zeros_like(mask)), big)
    with pytest.raises(ValueError, match="must match"):
        harmonizer(big, mask[:, :50])
    assert harmonizer.compilations == 1


def test_overlay_tints_and_outlines_only_the_region():
    photo = np.full((40, 50, 3), 100, np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[10:30, 10:40] = True
    out = visualize.overlay(photo, mask, color=(255, 0, 0), alpha=0.5, outline=2)
    np.testing.assert_array_equal(out[~mask], photo[~mask])
    np.testing.assert_array_equal(out[10, 20], [255, 0, 0])  # on the outline
    np.testing.assert_array_equal(out[11, 20], [255, 0, 0])
    np.testing.assert_array_equal(out[20, 25], [178, 50, 50])  # inside: half tint


def _folder(root):
    """Photos as users have them: sizes and orientations, a sub-folder, grey, RGBA, palette,
    16-bit, EXIF-rotated and a corrupt file."""
    os.makedirs(root / "sub")
    Image.fromarray(_photo(45, 70)).save(root / "wide.jpg")
    Image.fromarray(_photo(70, 45, 1)).save(root / "sub" / "tall.png")
    Image.fromarray(_photo(30, 40, 2)[..., 0]).save(root / "grey.jpg")
    rgba = np.concatenate([_photo(36, 36, 3), np.full((36, 36, 1), 128, np.uint8)], -1)
    Image.fromarray(rgba).save(root / "alpha.png")
    Image.fromarray(_photo(20, 24, 4)).convert("P").save(root / "palette.png")
    Image.fromarray(_photo(24, 20, 5)[..., 0].astype(np.uint16) * 257).save(root / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(_photo(40, 60, 6)).save(root / "rotated.jpg", exif=exif)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    return {"wide": (45, 70), "sub/tall": (70, 45), "grey": (30, 40), "alpha": (36, 36),
            "palette": (20, 24), "deep": (24, 20), "rotated": (60, 40)}


def test_predictor_writes_every_output_at_the_photos_size_and_skips_bad_files(localizer, rainnet,
                                                                              tmp_path, capsys):
    expected = _folder(tmp_path / "in")
    out = tmp_path / "out"
    photos = find_photos(str(tmp_path / "in"), exclude=str(out))
    assert len(photos) == 8  # the text file is not a photo; the broken one is tried
    harmonizer = inference.Harmonizer.from_checkpoint(rainnet[0])
    localizer = inference.Localizer(localizer.loaded)  # its own count of compilations
    summary = Predictor(str(out), localizer=localizer, harmonizer=harmonizer, batch_size=2,
                        image_format="png").run(photos, progress=False)
    assert summary.written == 7 and [os.path.basename(f) for f, _ in summary.skipped] == ["broken.jpg"]
    assert "skipped" in capsys.readouterr().err
    records = {r["name"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    assert set(records) == set(expected)
    for name, (h, w) in expected.items():
        r = records[name]
        assert (r["height"], r["width"]) == (h, w) and r["model"] == "dirl" and r["seconds"] > 0
        for kind in ("mask", "mask_bin", "overlay", "harmonized"):
            with Image.open(out / r["outputs"][kind]) as im:
                assert im.size == (w, h), (name, kind)
        binary = np.asarray(Image.open(out / r["outputs"]["mask_bin"]))
        assert set(np.unique(binary)) <= {0, 255}
        assert r["mask_area"] == pytest.approx((binary > 0).mean())
        photo = inference.jimages.load_rgb(r["file"]).array
        harmonized = np.asarray(Image.open(out / r["outputs"]["harmonized"]))
        np.testing.assert_array_equal(harmonized[binary == 0], photo[binary == 0])
    assert not list(out.rglob("*.tmp"))
    # one compiled program per shape: the localizer's batch (train policy) and the harmonizer's
    assert summary.compilations == localizer.compilations + harmonizer.compilations == 2
    # a rerun leaves done photos alone (their outputs, png here, and records exist; no harmonizer
    # asked: fewer outputs); --overwrite rewrites them
    before = (out / "wide_mask.png").stat().st_mtime_ns
    again = Predictor(str(out), localizer=localizer, image_format="png").run(photos, progress=False)
    assert again.kept == 7 and again.written == 0 and (out / "wide_mask.png").stat().st_mtime_ns == before
    forced = Predictor(str(out), localizer=localizer, overwrite=True).run(photos[:1], progress=False)
    assert forced.written == 1


def test_predict_py_runs_from_the_checkpoint_alone_and_reports_bad_arguments(dirl, rainnet, tmp_path):
    """The command line: no --config (model and config from the checkpoint's meta), a glob input,
    --long_side on two devices (a batch per device), a user's --mask for the harmonizer, and
    clear errors."""
    photos = tmp_path / "photos"
    _folder(photos)
    env = {**subprocess_env(), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = run(["predict.py", "--checkpoint", dirl[0], "--input", str(photos / "*.jpg"),
                "--output", str(tmp_path / "out"), "--long_side", "64", "--no_normalize",
                "--dtype", "float32"],
               {**subprocess_env(devices=2), "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert os.listdir(tmp_path / "cache" / "jirl" / "xla")  # the compiled programs, kept
    assert "--no_normalize is deprecated and goes in the next release; use --nonormalize" in proc.stderr
    assert "3 photos written, 1 unreadable skipped" in proc.stdout and "compilations" in proc.stdout
    lines = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert {r["name"] for r in lines} == {"wide", "grey", "rotated"}
    assert all(r["resize"] == "long_side" and r["normalized"] is False and r["dtype"] == "float32"
               for r in lines)
    # the same masks as one device computes
    loc = inference.Localizer.from_checkpoint(dirl[0], resize="long_side", long_side=64,
                                              dtype="float32")
    for r in lines:
        saved = np.asarray(Image.open(tmp_path / "out" / r["outputs"]["mask"]))
        expected = np.rint(loc(r["file"]) * 255)
        assert np.abs(saved.astype(int) - expected).max() <= 1, r["name"]
    mask = np.zeros((45, 70), np.uint8)
    mask[10:30, 20:50] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    run(["predict.py", "--harmonizer", rainnet[0], "--mask", str(tmp_path / "m.png"), "--input",
         str(photos / "wide.jpg"), "--output", str(tmp_path / "h"), "--image_format", "png"], env)
    harmonized = np.asarray(Image.open(tmp_path / "h" / "wide_harmonized.png"))
    original = np.asarray(Image.open(photos / "wide.jpg"))
    np.testing.assert_array_equal(harmonized[mask == 0], original[mask == 0])
    for args, message in [(["--checkpoint", dirl[0], "--input", str(tmp_path / "nothing")], "no such file"),
                          (["--checkpoint", str(tmp_path), "--input", str(photos)], "no checkpoint found"),
                          (["--input", str(photos)], "give a localizer checkpoint"),
                          (["--checkpoint", str(tmp_path / "nope.pth"), "--input", str(photos)],
                           f"weights file {tmp_path / 'nope.pth'} does not exist")]:
        proc = run(["predict.py", *args, "--output", str(tmp_path / "x")], env, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    proc = run(["predict.py", "--checkpoint", dirl[0], "--input", str(photos), "--resize", "native",
                "--long_side", "64"], env, check=False)  # a usage error: absl's status 1
    assert proc.returncode == 1 and "--long_side goes with --resize long_side" in proc.stderr


@pytest.mark.parametrize("bf16_units", [True, False])
def test_auto_dtype_is_bfloat16_on_a_cpu_with_bf16_units_and_moves_the_mask_little(
        dirl, localizer, monkeypatch, bf16_units):
    """dtype="auto" (the default): bf16 where the CPU has bf16 dot-product units, else the dtype
    the checkpoint was trained in; bf16 moves the probabilities by well under a mask level's
    worth of the threshold."""
    monkeypatch.setattr(inference.jcpu, "has_bf16_units", lambda: bf16_units)
    loc = inference.Localizer.from_checkpoint(dirl[0])
    assert loc.dtype == ("bfloat16" if bf16_units else "float32")
    photo = _photo(48, 72)
    if bf16_units:
        np.testing.assert_allclose(loc(photo), localizer(photo), atol=1e-2, rtol=0)
    choices = r"\('auto', 'float32', 'bfloat16', 'float16'\)"
    with pytest.raises(ValueError, match=rf"dtype='float64'; use one of {choices}"):
        inference.Localizer.from_checkpoint(dirl[0], dtype="float64")

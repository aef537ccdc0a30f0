"""EXIF orientation: images and masks are read upright wherever they are read (files, folder, ihd)."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jirl.data import folder, images

H, W = 24, 32  # upright (displayed) size: landscape
ORIENTATION = 0x0112
# How a camera stores an upright picture D under each orientation tag (its inverse is applied on
# reading): written with numpy here, independently of PIL's exif_transpose.
STORED = {
    2: lambda d: d[:, ::-1],  # mirrored
    3: lambda d: d[::-1, ::-1],  # rotated 180
    5: lambda d: np.swapaxes(d, 0, 1),  # transposed
    6: lambda d: np.rot90(d, 1),  # stored rotated 90 counter-clockwise; shown rotated clockwise
    8: lambda d: np.rot90(d, -1),
}
UPRIGHT = {  # the inverses
    2: lambda s: s[:, ::-1],
    3: lambda s: s[::-1, ::-1],
    5: lambda s: np.swapaxes(s, 0, 1),
    6: lambda s: np.rot90(s, -1),
    8: lambda s: np.rot90(s, 1),
}


def _upright(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _upright_mask() -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[2:9, 3:20] = 255  # asymmetric: any wrong orientation misplaces it
    return mask


def save_oriented(path, upright: np.ndarray, orientation: int, fmt: str = "PNG") -> None:
    """Writes ``upright`` as a camera would under ``orientation`` (1: as is), with the EXIF tag."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    stored = np.ascontiguousarray(STORED[orientation](upright)) if orientation != 1 else upright
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(stored).save(path, format=fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))


@pytest.mark.parametrize("orientation", sorted(STORED))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_load_rgb_and_mask_apply_the_orientation(tmp_path, orientation, fmt):
    path = str(tmp_path / f"x.{fmt.lower()}")
    save_oriented(path, _upright(orientation), orientation, fmt)
    loaded = images.load_rgb(path)
    assert loaded.array.shape == (H, W, 3)
    assert loaded.conversions == [f"EXIF orientation {orientation} applied"]
    assert loaded.original is None  # re-encoded upright, never the file's (rotated) bytes
    # The reference: the stored pixels as PIL decodes them, turned upright with numpy.
    upright = UPRIGHT[orientation](np.asarray(Image.open(path).convert("RGB")))
    np.testing.assert_array_equal(loaded.array, upright)
    if fmt == "PNG":  # lossless: exactly the picture that was written
        np.testing.assert_array_equal(loaded.array, _upright(orientation))
    stored_bytes = loaded.encoded().getvalue()
    assert stored_bytes[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(stored_bytes))), upright)
    # A mask: upright, binary, no resizing needed to match the upright composite size.
    mask_path = str(tmp_path / "m.png")
    save_oriented(mask_path, _upright_mask(), orientation)
    mask = images.load_mask(mask_path, size=(H, W))
    np.testing.assert_array_equal(mask.array[..., 0], _upright_mask())
    assert mask.conversions == [f"EXIF orientation {orientation} applied"]


def test_orientation_one_keeps_the_original_bytes(tmp_path):
    path = str(tmp_path / "x.jpg")
    save_oriented(path, _upright(0), 1, "JPEG")
    loaded = images.load_rgb(path)
    assert loaded.conversions == [] and loaded.original == open(path, "rb").read()


def _oriented_ihd_folder(root) -> dict[str, np.ndarray]:
    """One iHarmony-named example whose composite, mask and real carry three different orientations."""
    real = _upright(1)
    mask = _upright_mask()
    composite = real.copy()
    composite[mask > 0] //= 3
    save_oriented(os.path.join(root, "composite_images", "p1_1_1.png"), composite, 6)
    save_oriented(os.path.join(root, "masks", "p1_1.png"), mask, 8)
    save_oriented(os.path.join(root, "real_images", "p1.png"), real, 3)
    # A second example with no tags, as a control.
    save_oriented(os.path.join(root, "composite_images", "p2_1_1.png"), composite, 1)
    save_oriented(os.path.join(root, "masks", "p2_1.png"), mask, 1)
    save_oriented(os.path.join(root, "real_images", "p2.png"), real, 1)
    return {"composite": composite, "mask": mask[..., None], "real": real}


def test_folder_source_lines_up_oriented_files(tmp_path):
    expected = _oriented_ihd_folder(str(tmp_path / "phone"))
    source = folder.FolderSource(str(tmp_path / "phone"))
    assert len(source) == 2 and not source.skipped
    for index in range(2):
        example = source[index]
        for key in ("composite", "mask", "real"):
            np.testing.assert_array_equal(example[key], expected[key], err_msg=f"{index} {key}")
        assert example["mask_fraction"] == pytest.approx((expected["mask"] > 0).mean())
    converted = "\n".join(source.converted)
    for name, orientation in (("p1_1_1.png", 6), ("p1_1.png", 8), ("p1.png", 3)):
        assert f"{name}: EXIF orientation {orientation} applied" in converted
    assert "resized" not in converted  # the portrait-stored mask lines up without resizing


def test_ihd_builder_stores_oriented_files_upright(tmp_path):
    raw = tmp_path / "raw"
    expected = _oriented_ihd_folder(str(raw / "HFlickr"))
    # A JPEG composite with a tag too: must be re-encoded, not stored as its bytes.
    save_oriented(str(raw / "HFlickr" / "composite_images" / "p3_1_1.jpg"), expected["composite"], 6, "JPEG")
    save_oriented(str(raw / "HFlickr" / "masks" / "p3_1.png"), expected["mask"][..., 0], 1)
    save_oriented(str(raw / "HFlickr" / "real_images" / "p3.png"), expected["real"], 1)
    for split, names in (("train", ["p1_1_1.png", "p2_1_1.png", "p3_1_1.jpg"]), ("test", ["p2_1_1.png"])):
        (raw / "HFlickr" / f"HFlickr_{split}.txt").write_text("\n".join(names) + "\n")
    builder = tfds.builder("ihd/HFlickr", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(raw)))
    source = builder.as_data_source(split="train")
    assert [source[i]["name"].decode() for i in range(3)] == ["p1_1_1.png", "p2_1_1.png", "p3_1_1.jpg"]
    for index in (0, 1):
        for key in ("composite", "mask", "real"):
            np.testing.assert_array_equal(source[index][key], expected[key], err_msg=f"{index} {key}")
    # The JPEG: upright, stored as PNG, equal to its stored pixels turned upright.
    raw_bytes = builder.as_data_source(split="train", decoders={"composite": tfds.decode.SkipDecoding()})
    assert raw_bytes[2]["composite"][:8] == b"\x89PNG\r\n\x1a\n"
    stored = np.asarray(Image.open(raw / "HFlickr" / "composite_images" / "p3_1_1.jpg").convert("RGB"))
    np.testing.assert_array_equal(source[2]["composite"], UPRIGHT[6](stored))
    np.testing.assert_array_equal(source[2]["mask"], expected["mask"])
    with open(os.path.join(builder.data_dir, "preparation_report_train.json")) as f:
        converted = {item["file"]: item["conversions"] for item in json.load(f)["converted"]}
    assert converted[os.path.join("HFlickr", "composite_images", "p1_1_1.png")] == [
        "EXIF orientation 6 applied"
    ]
    assert converted[os.path.join("HFlickr", "masks", "p1_1.png")] == ["EXIF orientation 8 applied"]
    assert converted[os.path.join("HFlickr", "real_images", "p1.png")] == ["EXIF orientation 3 applied"]
    assert converted[os.path.join("HFlickr", "composite_images", "p3_1_1.jpg")] == [
        "EXIF orientation 6 applied"
    ]

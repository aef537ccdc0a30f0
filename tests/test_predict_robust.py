"""predict.py finishes what it starts and loses nothing: interrupted runs, name clashes, symlink
loops, unwritable output folders, oversized photos and non-finite numbers."""

import json
import os
import struct
import zlib

import numpy as np
import pytest
from jirl_testing import run, subprocess_env, tiny_checkpoint, tiny_dirl_config
from PIL import Image

from jirl import inference
from jirl import predict as jpredict
from jirl.data import images as jimages
from jirl.predict import JSONL, Predictor, find_photos

KINDS = ("mask", "mask_bin", "overlay")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("dirl"), tiny_dirl_config())[0]


@pytest.fixture(scope="module")
def localizer(checkpoint):
    return inference.Localizer.from_checkpoint(checkpoint, dtype="float32")


def _save(path, h, w, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)).save(path)


def _records(out):
    """The lines of predictions.jsonl, parsed as strict JSON (NaN / Infinity refused)."""
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return [json.loads(line, parse_constant=refuse)
            for line in (out / JSONL).read_text().splitlines()]


def _complete(out, photos):
    """Every photo has all its outputs and exactly one record, and no temporary file is left."""
    records = _records(out)
    assert sorted(r["file"] for r in records) == sorted(p.path for p in photos)
    for r in records:
        assert set(r["outputs"]) == set(KINDS)
        for kind in KINDS:
            assert (out / r["outputs"][kind]).is_file(), (r["name"], kind)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def _huge_png(width, height) -> bytes:
    """A valid PNG of width x height 1-bit black pixels, a few KB: zero rows compressed a block at
    a time (memory-light)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = 1 + (width + 7) // 8  # the filter byte and the packed bits
    compressor, block = zlib.compressobj(9), bytes(row * 500)
    idat = b"".join(compressor.compress(block) for _ in range(height // 500))
    idat += compressor.compress(bytes(row * (height % 500))) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_an_interrupted_run_is_finished_by_the_next(localizer, tmp_path, monkeypatch):
    """Ctrl-C after the first output of the 2nd photo; then what a kill leaves (a stale temporary
    file, a record cut short, a lone output of a photo without a record): the next run redoes
    exactly the unfinished photos and leaves every photo whole, with one record each."""
    for k, name in enumerate("abcd"):
        _save(tmp_path / "in" / f"{name}.png", 20 + k, 30, seed=k)
    out = tmp_path / "out"
    photos = find_photos(str(tmp_path / "in"), exclude=str(out))
    save, calls = jpredict.visualize.save_image, []

    def interrupted(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == len(KINDS) + 2:
            raise KeyboardInterrupt
        save(path, *args, **kwargs)

    monkeypatch.setattr(jpredict.visualize, "save_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        Predictor(str(out), localizer=localizer).run(photos, progress=False)
    monkeypatch.undo()
    assert [r["name"] for r in _records(out)] == ["a"]
    assert not (out / "b_mask.png").exists()  # the interrupted photo's outputs are removed
    # what a kill -9 would leave: a temporary file, a partial record, an output without a record
    (out / ".b_mask_bin.png.x1y2z3_4.tmp").write_bytes(b"half a png")
    (out / "c_mask.png").write_bytes((out / "a_mask.png").read_bytes())
    with open(out / JSONL, "a") as f:
        f.write('{"file": "' + photos[3].path + '", "na')
    summary = Predictor(str(out), localizer=localizer).run(photos, progress=False)
    assert (summary.written, summary.kept) == (3, 1)
    _complete(out, photos)
    # a rerun finds everything done; --overwrite redoes it all and still keeps one record each
    assert Predictor(str(out), localizer=localizer).run(photos, progress=False).kept == 4
    again = Predictor(str(out), localizer=localizer, overwrite=True).run(photos, progress=False)
    assert (again.written, again.kept) == (4, 0)
    _complete(out, photos)


def test_a_full_disk_leaves_no_half_photo(localizer, tmp_path, monkeypatch):
    """An OSError while writing a photo (a full disk) removes what that photo had written and
    says which photo; the next run writes it."""
    _save(tmp_path / "in" / "a.png", 20, 30)
    _save(tmp_path / "in" / "b.png", 20, 30, seed=1)
    out = tmp_path / "out"
    photos = find_photos(str(tmp_path / "in"))
    save, calls = jpredict.visualize.save_image, []

    def full(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == len(KINDS) + 3:
            raise OSError(28, "No space left on device")
        save(path, *args, **kwargs)

    monkeypatch.setattr(jpredict.visualize, "save_image", full)
    with pytest.raises(OSError, match=r"b\.png.*No space left"):
        Predictor(str(out), localizer=localizer).run(photos, progress=False)
    monkeypatch.undo()
    assert not list(out.glob("b_*"))
    assert Predictor(str(out), localizer=localizer).run(photos, progress=False).written == 1
    _complete(out, photos)


def test_same_stem_different_extensions_get_their_own_outputs(localizer, tmp_path):
    """dup.jpg and dup.png: outputs named with the extension (dup.jpg_mask.png, ...), every other
    photo as before; --overwrite replaces records instead of adding to them."""
    _save(tmp_path / "in" / "dup.jpg", 20, 30)
    _save(tmp_path / "in" / "dup.png", 30, 20, seed=1)
    _save(tmp_path / "in" / "dup.jpg.png", 24, 24, seed=2)  # its stem is the first one's name
    _save(tmp_path / "in" / "solo.png", 22, 22, seed=3)
    out = tmp_path / "out"
    photos = find_photos(str(tmp_path / "in"), exclude=str(out))
    assert [p.name for p in photos] == ["dup.jpg", "dup.jpg.png", "dup.png", "solo"]
    assert find_photos(str(tmp_path / "in"), exclude=str(out)) == photos  # the same every run
    summary = Predictor(str(out), localizer=localizer).run(photos, progress=False)
    assert summary.written == 4
    _complete(out, photos)
    for r in _records(out):
        with Image.open(out / r["outputs"]["mask"]) as mask, Image.open(r["file"]) as photo:
            assert mask.size == photo.size, r["name"]
    assert (out / "dup.jpg_mask.png").is_file() and (out / "solo_mask.png").is_file()
    Predictor(str(out), localizer=localizer, overwrite=True).run(photos, progress=False)
    _complete(out, photos)


def test_two_photos_with_one_output_name_are_refused(localizer, tmp_path):
    photo = jpredict.Photo(str(tmp_path / "a.png"), "a")
    with pytest.raises(ValueError, match="share the output name"):
        Predictor(str(tmp_path / "out"), localizer=localizer).run(
            [photo, jpredict.Photo(str(tmp_path / "a.jpg"), "a")], progress=False)


def test_symlink_loops_and_links_are_walked_once(tmp_path):
    """A folder linking to itself (a recursive glob follows it 40 levels deep), a second route to
    a folder and a file, and the output folder reached through a link: each photo once, by its
    real path; the outputs never read back."""
    root = tmp_path / "in"
    _save(root / "a.png", 8, 8)
    _save(root / "sub" / "b.png", 8, 8)
    _save(root / "out" / "old_mask.png", 8, 8)  # an earlier run's output
    os.symlink(root, root / "loop")
    os.symlink(root / "sub", root / "again")
    os.symlink(root / "a.png", root / "alias.png")
    os.symlink(root, tmp_path / "link")
    expected = [str(root / "a.png"), str(root / "sub" / "b.png")]
    for spec, exclude in [(root, tmp_path / "link" / "out"), (tmp_path / "link", root / "out"),
                          (f"{root}/**/*.png", tmp_path / "link" / "out")]:
        photos = find_photos(str(spec), exclude=str(exclude))
        assert sorted(os.path.realpath(p.path) for p in photos) == expected, spec
        assert len({p.name for p in photos}) == len(photos)
    assert [p.name for p in find_photos(str(root), exclude=str(root / "out"))] == ["a", "sub/b"]


def test_an_unwritable_output_folder_is_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OSError, match="is a file, not a folder"):
        jpredict.prepare_output(str(tmp_path / "file"))
    with pytest.raises(OSError, match="cannot create the output folder"):
        jpredict.prepare_output(str(tmp_path / "file" / "sub"))
    jpredict.prepare_output(str(tmp_path / "new" / "out"))
    assert os.listdir(tmp_path / "new" / "out") == []


def test_a_read_only_output_folder_is_one_line(tmp_path, monkeypatch):
    """A folder the run cannot write in (read-only here by a refused probe file: CI runs as root,
    whom a 0o555 folder does not stop)."""
    (tmp_path / "ro").mkdir()

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(jpredict.tempfile, "mkstemp", refused)
    with pytest.raises(OSError, match="cannot write in the output folder .*ro: Permission denied$"):
        jpredict.prepare_output(str(tmp_path / "ro"))


def test_predict_py_reports_an_unwritable_output_before_loading_a_model_and_skips_huge_photos(
        checkpoint, tmp_path):
    photos = tmp_path / "photos"
    _save(photos / "small.png", 20, 30)
    _save(photos / "big.png", 40, 60, seed=1)
    (tmp_path / "file").write_text("not a folder")
    env = {**subprocess_env(), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for ckpt, output, message in [
            (checkpoint, tmp_path / "file", "is a file, not a folder"),
            (str(tmp_path / "nope.pth"), tmp_path / "file" / "sub", "cannot create the output folder")]:
        proc = run(["predict.py", "--checkpoint", ckpt, "--input", str(photos), "--output",
                    str(output)], env, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and "weights file" not in proc.stderr
    proc = run(["predict.py", "--checkpoint", checkpoint, "--input", str(photos), "--output",
                str(tmp_path / "out"), "--max_pixels", "1000", "--dtype", "float32"], env)
    assert "1 photos written, 1 unreadable skipped" in proc.stdout, proc.stdout
    assert "big.png: 60x40 pixels" in proc.stderr and "--max_pixels" in proc.stderr, proc.stderr


def test_check_pixels_reads_only_the_header(tmp_path, monkeypatch):
    """A 140 KB-class PNG announcing 12000 x 12000 (under PIL's own bomb error) and one of
    20000 x 20000 (over it) are refused from their headers, whatever PIL's global limit."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # jirl's limit does not depend on PIL's
    for side in (12000, 20000):
        data = _huge_png(side, side)
        assert len(data) < 200_000
        (tmp_path / "huge.png").write_bytes(data)
        with pytest.raises(jimages.TooLargeError, match=f"{side}x{side} pixels"):
            jimages.check_pixels(data, jimages.MAX_PIXELS)
        with pytest.raises(jimages.TooLargeError):
            jimages.check_pixels(tmp_path / "huge.png")
        for load in (jimages.load_rgb, jimages.load_mask):
            with pytest.raises(jimages.TooLargeError, match="more than the 50 MP allowed"):
                load(tmp_path / "huge.png")
    assert jimages.check_pixels(_huge_png(300, 200), 60_000) == (300, 200)
    assert jimages.check_pixels(b"not an image") is None
    with pytest.raises(jimages.TooLargeError):
        jimages.check_pixels(_huge_png(300, 200), 59_999)
    monkeypatch.undo()  # PIL's own limit back: its decompression-bomb error is a TooLargeError
    with pytest.raises(jimages.TooLargeError):
        jimages.load_rgb(tmp_path / "huge.png", max_pixels=None)


def test_predictor_skips_a_photo_over_max_pixels(localizer, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "huge.png").write_bytes(_huge_png(12000, 12000))
    _save(tmp_path / "in" / "ok.png", 20, 30)
    summary = Predictor(str(tmp_path / "out"), localizer=localizer).run(
        find_photos(str(tmp_path / "in")), progress=False)
    assert summary.written == 1 and [os.path.basename(f) for f, _ in summary.skipped] == ["huge.png"]
    assert "12000x12000 pixels (144 MP)" in capsys.readouterr().err


def test_non_finite_probabilities_are_null_in_predictions_jsonl(localizer, tmp_path, monkeypatch):
    """Corrupt weights give NaN: predictions.jsonl stays strict JSON (null)."""
    _save(tmp_path / "in" / "a.png", 20, 30)
    broken = inference.Localizer(localizer.loaded)
    monkeypatch.setattr(broken, "run", lambda x: {"mask": np.full(x.shape[:3], np.nan, np.float32)})
    with np.errstate(invalid="ignore"):
        Predictor(str(tmp_path / "out"), localizer=broken).run(
            find_photos(str(tmp_path / "in")), progress=False)
    (record,) = _records(tmp_path / "out")
    assert record["max_probability"] is None

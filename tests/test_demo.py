"""jirl.demo's work behind the page (tiny models, small photos): the same pictures as
jirl.Localizer / jirl.Harmonizer, every resolution policy, bad uploads as messages; and its
limits: no image decoded before its header's pixel count is checked (whichever endpoint it
arrives at), no drawing endpoint without a harmonizer, the page's files under a size cap in one
temporary folder that goes when the server stops, SIGTERM included."""

import asyncio
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib

import chex
import httpx
import numpy as np
import pytest
from jirl_testing import (
    free_port,
    run,
    subprocess_env,
    tiny_checkpoint,
    tiny_dirl_config,
    tiny_madisnet_config,
    tiny_rainnet_config,
)
from PIL import Image, ImageFile

from jirl import inference, visualize
from jirl.data import synthetic
from jirl.demo import Demo, DemoError, core, page, write_samples
from jirl.demo.page import Pictures, build_app, compare_view, drawn_region, page_outputs


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    dirl = tiny_checkpoint(root / "dirl", tiny_dirl_config())[0]
    rainnet = tiny_checkpoint(root / "rainnet", tiny_rainnet_config())[0]
    return dirl, rainnet


@pytest.fixture(scope="module")
def demo(checkpoints):
    localizer = inference.Localizer.from_checkpoint(checkpoints[0], dtype="float32")
    return Demo(localizer, inference.Harmonizer.from_checkpoint(checkpoints[1]))


def _photo_file(directory, h=40, w=60, seed=0, name="photo.png"):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 4, w // 4, 3), np.uint8)
    photo = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))
    path = os.path.join(directory, name)
    Image.fromarray(photo).save(path)
    return path, photo


def test_analyze_shows_what_localizer_and_harmonizer_return_at_the_photos_size(demo, tmp_path):
    path, photo = _photo_file(tmp_path)
    result = demo.analyze(path, "train")
    chex.assert_shape([result.photo, result.overlay, result.harmonized], (40, 60, 3))
    chex.assert_shape([result.probability, result.region], (40, 60))
    np.testing.assert_array_equal(result.photo, photo)
    # The same inference path as predict.py: Localizer's map, the official binary mask, overlay.
    prob = inference.Localizer.from_checkpoint(demo.localizer("train").loaded.checkpoint,
                                               dtype="float32")(photo)
    np.testing.assert_array_equal(result.probability, np.rint(prob * 255).astype(np.uint8))
    region = inference.binary_mask(prob)
    assert 0 < region.mean() < 1
    np.testing.assert_array_equal(result.region, region)
    np.testing.assert_array_equal(result.overlay, visualize.overlay(photo, region))
    np.testing.assert_array_equal(result.harmonized, demo.harmonizer(photo, region))
    assert result.retouched is None and not demo.has_retouched
    assert result.run_size == (32, 32)
    assert set(result.seconds) == {"decode", "localize", "harmonize", "compile", "total"}
    text = result.summary("dirl", "rainnet")
    assert "60×40" in text and "32×32" in text and "harmonize (rainnet)" in text


@pytest.mark.parametrize("policy, long_side, run_size", [("native", None, (40, 60)),
                                                          ("long_side", 48, (32, 48))])
def test_every_policy_keeps_the_photos_size_and_one_localizer_each(demo, tmp_path, policy,
                                                                     long_side, run_size):
    path, _ = _photo_file(tmp_path)
    result = demo.analyze(path, policy, long_side)
    assert result.run_size == run_size and result.probability.shape == (40, 60)
    assert demo.localizer(policy, long_side) is demo.localizer(policy, long_side)
    assert demo.localizer(policy, long_side).resize == policy


def test_policies_share_the_compiled_programs(demo, tmp_path):
    demo.analyze(_photo_file(tmp_path)[0], "train")  # compiles (or has compiled) 32 x 32
    square = demo.analyze(_photo_file(tmp_path, 32, 32, name="square.png")[0], "native")
    assert square.run_size == (32, 32) and square.seconds["compile"] == 0.0
    assert demo.localizer("native").compilations == demo.localizer("train").compilations


def _pictures(tmp_path) -> Pictures:
    return Pictures(page.Workspace(parent=str(tmp_path)))


def test_pictures_are_lossless_files_and_the_toggle_picks_input_or_harmonized(demo, tmp_path):
    result = demo.analyze(_photo_file(tmp_path)[0])
    pictures = _pictures(tmp_path)
    files = pictures.save(result)
    assert files["retouched"] is None
    for name in ("photo", "probability", "overlay", "harmonized"):
        np.testing.assert_array_equal(np.asarray(Image.open(files[name])), getattr(result, name))
    assert compare_view(files, "harmonized") == files["harmonized"]
    assert compare_view(files, "input") == files["photo"]
    assert compare_view(None, "input") is None
    pictures.workspace.max_bytes = 2 * sum(os.path.getsize(p) for p in files.values() if p)
    later = [pictures.save(result) for _ in range(2)]  # only the last two results fit
    assert not any(os.path.exists(p) for p in files.values() if p)
    assert compare_view(files, "input") is None  # a dropped result's toggle shows nothing
    assert all(os.path.exists(p) for f in later for p in f.values() if p)


def test_the_page_event_fills_every_panel_or_says_why_not_and_never_raises(demo, tmp_path,
                                                                           monkeypatch):
    pictures = _pictures(tmp_path)
    path, photo = _photo_file(tmp_path)
    status, *panels, files = page_outputs(demo, pictures, path, "train", None, None, "input")
    assert status.startswith("**dirl** on 60×40")
    assert panels == [files["photo"], files["probability"], files["overlay"], None, files["photo"]]
    assert page_outputs(demo, pictures, None, "train", None, None, "input") == (
        "Upload a photo.", None, None, None, None, None, None)
    status, *rest = page_outputs(demo, pictures, str(tmp_path / "gone.png"), "train", None, None,
                                 "input")
    assert status.startswith("**Error:** the upload gone.png is gone") and rest == [None] * 6

    def broken(*args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(demo, "analyze", broken)
    status, *rest = page_outputs(demo, pictures, path, "train", None, None, "input")
    assert status == ("**Error:** the model failed on this photo (RuntimeError: out of memory); "
                      "the server log has the details") and rest == [None] * 6


def test_a_users_mask_is_the_region_harmonized(demo, tmp_path):
    path, photo = _photo_file(tmp_path)
    mask = np.zeros((40, 60), np.uint8)
    mask[6:24, 10:40] = 255  # even edges: the half-size file resizes back exactly
    Image.fromarray(mask[::2, ::2]).save(tmp_path / "mask.png")  # half size: resized nearest
    result = demo.analyze(path, mask=str(tmp_path / "mask.png"))
    np.testing.assert_array_equal(result.region, mask > 0)
    np.testing.assert_array_equal(result.harmonized[mask == 0], photo[mask == 0])
    assert (result.harmonized[mask > 0] != photo[mask > 0]).any()


def test_a_painted_region_is_harmonized_at_the_photos_size(demo, tmp_path):
    path, photo = _photo_file(tmp_path)
    paint = np.zeros((20, 30, 4), np.uint8)  # the drawing panel at half the photo's size
    paint[3:12, 5:20] = (255, 48, 48, 153)
    editor = {"background": None, "layers": [paint], "composite": None}
    np.testing.assert_array_equal(drawn_region(editor), paint[..., 3] > 0)
    status, *_, files = page_outputs(demo, _pictures(tmp_path), path, "train", None, editor, "harmonized")
    assert "region 22.5% of the photo" in status  # 9 x 15 of 20 x 30, resized nearest
    region = np.zeros((40, 60), bool)
    region[6:24, 10:40] = True
    harmonized = np.asarray(Image.open(files["harmonized"]))
    np.testing.assert_array_equal(harmonized[~region], photo[~region])
    assert (harmonized[region] != photo[region]).any()
    for empty in (None, {"layers": []}, {"layers": [np.zeros((20, 30, 4), np.uint8)]}):
        status = page_outputs(demo, _pictures(tmp_path), path, "train", None, empty or {}, "input")[0]
        assert status == "**Error:** draw over the region to harmonize first", status


def test_bad_uploads_are_messages(demo, tmp_path):
    (tmp_path / "notes.txt").write_text("not a photo")
    good, _ = _photo_file(tmp_path)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(open(good, "rb").read()[:200])
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    cases = {
        None: "upload a photo first",
        str(tmp_path / "gone.png"): "is gone",
        str(tmp_path / "notes.txt"): "notes.txt is not a usable image: cannot decode",
        str(corrupt): "corrupt.jpg is not a usable image",
    }
    for path, message in cases.items():
        with pytest.raises(DemoError, match=message):
            demo.analyze(path)
    small = Demo(demo.localizer("train"), max_pixels=300 * 200 - 1, max_run_pixels=64 * 64)
    with pytest.raises(DemoError, match=r"300×200 \(0 MP\), more than this demo accepts"):
        small.analyze(str(tmp_path / "big.png"))
    with pytest.raises(DemoError, match="run the model at 96×64, more than 0.0 MP"):
        small.analyze(_photo_file(tmp_path, 64, 90, name="wide.png")[0], "native")
    with pytest.raises(DemoError, match="unknown resolution policy 'huge'"):
        demo.analyze(good, "huge")
    with pytest.raises(DemoError, match="the mask notes.txt is not usable"):
        demo.analyze(good, mask=str(tmp_path / "notes.txt"))


def test_madisnet_shows_its_colour_mapped_image(tmp_path):
    path = tiny_checkpoint(tmp_path / "madisnet", tiny_madisnet_config())[0]
    localizer = inference.Localizer.from_checkpoint(path, dtype="float32")
    demo = Demo(localizer)
    assert demo.has_retouched and demo.harmonizer is None
    photo_path, photo = _photo_file(tmp_path)
    result = demo.analyze(photo_path)
    expected = localizer.predict([photo])[0]["retouched"]
    chex.assert_shape(result.retouched, (40, 60, 3))
    np.testing.assert_array_equal(result.retouched, np.rint(expected * 255).astype(np.uint8))
    assert result.harmonized is None and "harmonize" not in result.summary("madisnet", None)


def test_samples_are_the_embedded_test_composites(tmp_path):
    paths = write_samples(str(tmp_path), count=2, size=64)
    assert write_samples(str(tmp_path), count=2, size=64) == paths
    for index, path in enumerate(paths):
        expected = synthetic.generate_example("test", index, image_size=64)["composite"]
        np.testing.assert_array_equal(np.asarray(Image.open(path)), expected)


def _blocks(page) -> dict:
    return {getattr(block, "elem_id", None): block for block in page.blocks.values()}


def test_the_page_builds_with_the_panels_of_its_models(demo):
    ids = _blocks(build_app(demo, []))
    assert {"jirl-photo", "jirl-status", "jirl-out-mask", "jirl-out-harmonized"} <= set(ids)
    assert not ids["jirl-out-retouched"].visible and ids["jirl-out-harmonized"].visible
    assert ids["jirl-policy"].value == "train"
    # The page starts with the policy the demo's localizer was made with (--resize).
    ids = _blocks(build_app(Demo(demo.localizer("train").with_policy("long_side", 96)), []))
    assert ids["jirl-policy"].value == "long_side" and ids["jirl-long-side"].value == 96
    assert not ids["jirl-out-harmonized"].visible


def test_demo_cli_reports_a_bad_checkpoint_and_a_busy_port(checkpoints, tmp_path):
    common = ["-m", "jirl.demo", "--compile_cache", "", "--samples", "0", "--nowarmup"]
    proc = run([*common, "--checkpoint", str(tmp_path / "none")], subprocess_env(), check=False,
               timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "demo:" in proc.stderr and "none" in proc.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run([*common, "--checkpoint", checkpoints[0], "--port", str(port)],
                   subprocess_env(), check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"demo: cannot listen on 127.0.0.1:{port}" in proc.stderr


LIMIT = "more than this demo accepts (50 MP; --max_pixels)"
BOMBS = [(12000, f"12000×12000 (144 MP), {LIMIT}"),  # under twice PIL's limit: PIL would decode
         (20000, f"over 179 MP, {LIMIT}")]  # PIL's own check refuses it, with a vaguer message


def _bomb(path, side: int) -> str:
    """A PNG whose header says side x side (mode "1", blank rows): some 20 KB on disk, 4 bytes a
    pixel once decoded as RGBA. Written a row at a time, so making it costs no memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    stream, row = zlib.compressobj(9), bytes(1 + (side + 7) // 8)
    idat = b"".join(stream.compress(row) for _ in range(side)) + stream.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
                + chunk(b"IEND", b""))
    return str(path)


@pytest.fixture
def no_big_decode(monkeypatch):
    """Decoding an image of more than a megapixel fails the test (what a bomb would cost)."""
    load = ImageFile.ImageFile.load

    def checked(image):
        assert image.size[0] * image.size[1] <= 1_000_000, f"decoded a {image.size} image"
        return load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", checked)


@pytest.fixture
def uploads(monkeypatch, tmp_path) -> str:
    """Gradio's cache for this test, where it keeps uploads (the server's is its workspace)."""
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    os.makedirs(tmp_path / "gradio")
    return str(tmp_path / "gradio")


def _call(app, takes: str, inputs: list) -> list:
    """What the page's first endpoint taking the component `takes` (an elem_id) answers to
    `inputs` (JSON, as a client sends them): Gradio's preprocessing, jirl's function, Gradio's
    postprocessing."""
    fn = next(f for f in app.fns.values() if takes in [getattr(b, "elem_id", None)
                                                       for b in f.inputs])
    return asyncio.run(app.process_api(fn, inputs, explicit_call=True))["data"]


def _file(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


@pytest.mark.parametrize("side, message", BOMBS)
def test_the_drawing_endpoint_refuses_a_bomb_before_gradio_decodes_it(demo, uploads, no_big_decode,
                                                                      side, message):
    gr = page.import_gradio()
    from gradio.components.image_editor import EditorData, EditorDataBlobs

    app = build_app(demo, [])
    bomb = _bomb(os.path.join(uploads, "bomb.png"), side)
    photo, _ = _photo_file(uploads)
    drawing = {"background": None, "layers": [_file(bomb)], "composite": None}
    refused = re.escape(f"the drawing is {message}")
    with pytest.raises(gr.Error, match=refused):  # a client's upload as a layer
        _call(app, "jirl-draw", [_file(photo), "train", None, drawing, "harmonized"])
    editor = _blocks(app)["jirl-draw"]  # the page's own route: the editor's blobs, then the event
    with open(bomb, "rb") as f:
        editor.blob_storage["blob"] = EditorDataBlobs(background=f.read(), layers=[],
                                                      composite=None)
    with pytest.raises(gr.Error, match=refused):
        editor.preprocess(EditorData(id="blob"))


def test_drawings_sent_but_never_used_are_not_kept_without_bound(demo):
    from gradio.components.image_editor import AcceptBlobs

    editor = _blocks(build_app(demo, []))["jirl-draw"]
    for index in range(20):  # a client sending drawings (the page's own route) and no event
        editor.accept_blobs(AcceptBlobs(
            data={"type": "layer", "index": "0", "id": f"d{index}", "file": b""},
            files=[("layer_0.png", bytes(1000))]))
    assert list(editor.blob_storage) == [f"d{index}" for index in range(12, 20)]


@pytest.mark.parametrize("side, message", BOMBS)
def test_a_bomb_as_the_photo_or_the_mask_is_refused_before_decoding(demo, uploads, no_big_decode,
                                                                     side, message):
    app = build_app(demo, [])
    bomb = _bomb(os.path.join(uploads, "bomb.png"), side)
    photo, _ = _photo_file(uploads)
    status = _call(app, "jirl-photo", [_file(bomb), "train", None, None, "harmonized"])[0]
    assert status == f"**Error:** the photo is {message}", status
    status = _call(app, "jirl-photo", [_file(photo), "train", None, _file(bomb), "harmonized"])[0]
    assert status == f"**Error:** the mask bomb.png is {message}", status


def test_without_a_harmonizer_there_is_no_drawing_or_mask_endpoint(checkpoints):
    gr = page.import_gradio()
    localizer = inference.Localizer.from_checkpoint(checkpoints[0], dtype="float32")
    rainnet = inference.Harmonizer.from_checkpoint(checkpoints[1])
    for harmonizer, expected in ((None, False), (rainnet, True)):
        app = build_app(Demo(localizer, harmonizer), [])
        inputs = {b for fn in app.fns.values() for b in fn.inputs}
        editors = [b for b in app.blocks.values() if isinstance(b, gr.ImageEditor)]
        assert bool(editors) == any(isinstance(b, gr.ImageEditor) for b in inputs) == expected
        files = [b for b in inputs if isinstance(b, gr.File)]
        assert len(files) == 1 + expected  # the photo, and with a harmonizer the mask


def _bytes(folder) -> int:
    return sum(os.path.getsize(os.path.join(root, name))
               for root, _, names in os.walk(folder) for name in names)


def test_trim_folder_deletes_the_oldest_files_beyond_the_cap(tmp_path):
    paths = []
    for age in range(10, 0, -1):  # 10 files of 1000 bytes, one folder each (as Gradio's cache)
        os.makedirs(tmp_path / f"h{age}")
        paths.append(str(tmp_path / f"h{age}" / "f.png"))
        with open(paths[-1], "wb") as f:
            f.write(bytes(1000))
        os.utime(paths[-1], (time.time() - age, time.time() - age))
    deleted = core.trim_folder(str(tmp_path), 4500, keep=[paths[0], str(tmp_path / "h9")])
    assert deleted == paths[2:8]  # the oldest two kept, then the newest two fit
    assert _bytes(tmp_path) == 4000 and all(os.path.exists(p) for p in paths[:2] + paths[8:])
    assert sorted(os.listdir(tmp_path)) == ["h1", "h10", "h2", "h9"]  # empty folders go


def test_the_pages_files_stay_under_the_cap_and_the_newest_result_stays(demo, tmp_path):
    workspace = page.Workspace(parent=str(tmp_path))
    pictures = Pictures(workspace)
    core.write_samples(workspace.samples, count=1, size=64)  # kept, however old
    results = []
    for index in range(6):
        upload = os.path.join(workspace.cache, f"upload{index}")  # as Gradio keeps an upload
        os.makedirs(upload)
        photo, _ = _photo_file(upload, 64, 96, seed=index)
        *_, files = page_outputs(demo, pictures, photo, "train", None, None, "input")
        results.append([photo, *(p for p in files.values() if p)])
        if index == 0:  # room for two and a half results
            workspace.max_bytes = int(2.5 * _bytes(workspace.cache))
        assert _bytes(workspace.cache) <= workspace.max_bytes
    assert all(os.path.exists(p) for p in results[-1] + results[-2])
    assert not any(os.path.exists(p) for p in results[0] + results[1] + results[2])
    assert os.listdir(workspace.samples)
    workspace.remove()
    assert not os.path.exists(workspace.root)


def _analyze_over_http(url: str, photo: str) -> str:
    """Uploads `photo` and runs the page's analysis on it, as the page does on an upload (the
    endpoint "run"); the status line."""
    with open(photo, "rb") as f:
        path = httpx.post(f"{url}gradio_api/upload", files={"files": f}, timeout=60).json()[0]
    call = f"{url}gradio_api/call/run"
    event = httpx.post(call, json={"data": [_file(path), "train", None, None, "input"]},
                       timeout=60).json()["event_id"]
    answer = httpx.get(f"{call}/{event}", timeout=300).text  # server-sent events, the last data
    return json.loads(answer.strip().splitlines()[-1].removeprefix("data: "))[0]


def test_sigterm_closes_the_server_and_removes_its_temporary_folder(checkpoints, tmp_path):
    env = subprocess_env()
    env["TMPDIR"] = str(tmp_path / "tmp")  # everything the demo keeps on disk goes here
    os.makedirs(env["TMPDIR"])
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    log = open(tmp_path / "demo.log", "w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "jirl.demo", "--checkpoint", checkpoints[0], "--compile_cache", "",
         "--samples", "1", "--nowarmup", "--dtype", "float32", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        start = time.perf_counter()
        while True:
            assert process.poll() is None, log.seek(0) or log.read()
            try:
                httpx.get(url, timeout=2)
                break
            except httpx.HTTPError:
                assert time.perf_counter() - start < 240, "the demo did not answer"
                time.sleep(0.5)
        assert "**dirl** on 60×40" in _analyze_over_http(url, _photo_file(tmp_path)[0])
        (folder,) = os.listdir(env["TMPDIR"])  # one folder for everything: the workspace
        assert folder.startswith("jirl-demo-")
        assert os.listdir(os.path.join(env["TMPDIR"], folder, "gradio", "pictures"))
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.seek(0) or log.read()
    finally:
        if process.poll() is None:
            process.kill()
    assert os.listdir(env["TMPDIR"]) == []

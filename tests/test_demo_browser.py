"""The demo page end to end in a real browser: `python -m jirl.demo` on loopback, driven by
Debian's headless Chromium (Selenium + chromedriver). Marked `browser`; it needs `chromium` and
`chromium-driver` (apt) and is skipped, saying so, where they are missing, unless
JIRL_REQUIRE_BROWSER=1 (as in .ci/run) makes that a failure.

The screenshot of the page with a result is written to $JIRL_ARTIFACTS (default: the test's tmp
directory) as demo_browser.png."""

import os

import demo_browser as browser
import numpy as np
import pytest
from jirl_testing import free_port, subprocess_env, tiny_checkpoint, tiny_dirl_config, tiny_rainnet_config
from PIL import Image

from jirl import inference

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium():
    try:
        return browser.find_chromium()
    except browser.BrowserMissing as e:
        if os.environ.get("JIRL_REQUIRE_BROWSER") == "1":
            pytest.fail(str(e))
        pytest.skip(str(e))


def _photo(path, h, w, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3), np.uint8)
    photo = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))
    Image.fromarray(photo).save(path)
    return photo


def test_upload_shows_the_mask_at_the_photos_aspect_and_bad_files_an_error(chromium, tmp_path):
    dirl = tiny_checkpoint(tmp_path / "dirl", tiny_dirl_config())[0]
    rainnet = tiny_checkpoint(tmp_path / "rainnet", tiny_rainnet_config())[0]
    photo = _photo(tmp_path / "photo.png", 64, 96)  # 3:2, the model runs at 32 x 32
    (tmp_path / "corrupt.jpg").write_bytes((tmp_path / "photo.png").read_bytes()[:300])
    _photo(tmp_path / "huge.png", 400, 400)  # above --max_pixels
    noise = np.random.default_rng(1).integers(0, 256, (640, 640, 3), np.uint8)
    Image.fromarray(noise).save(tmp_path / "heavy.png")  # a 1.2 MB file, above --max_file_mb
    args = ["--checkpoint", dirl, "--harmonizer", rainnet, "--compile_cache", "", "--samples", "2",
            "--dtype", "float32", "--max_pixels", "150000", "--max_file_mb", "1"]
    artifacts = os.environ.get("JIRL_ARTIFACTS") or str(tmp_path)
    with browser.DemoServer(args, free_port(), env=subprocess_env()) as server, \
            browser.DemoBrowser(server.url) as page:
        assert page.status() == "Upload a photo."
        page.upload(str(tmp_path / "photo.png"))
        assert page.status().startswith("dirl on 96×64"), page.status()
        for panel in ("jirl-out-photo", "jirl-out-mask", "jirl-out-overlay", "jirl-out-harmonized"):
            assert page.image_size(panel) == (96, 64), panel  # the photo's size and aspect ratio
        # What the page shows is jirl.Localizer's map and the harmonized photo, pixel for pixel.
        prob = inference.Localizer.from_checkpoint(dirl, dtype="float32")(photo)
        shown = page.image_pixels("jirl-out-mask")
        np.testing.assert_array_equal(shown[..., 0], np.rint(prob * 255).astype(np.uint8))
        np.testing.assert_array_equal(page.image_pixels("jirl-out-photo"), photo)
        harmonized = page.image_pixels("jirl-out-harmonized")
        assert (harmonized != photo).any()
        # The compare toggle swaps the harmonized panel to the input and back.
        before = page.image_src("jirl-out-harmonized")
        page.click("#jirl-compare input[value='input']")
        page.wait_for_change("jirl-out-harmonized", before)
        np.testing.assert_array_equal(page.image_pixels("jirl-out-harmonized"), photo)
        before = page.image_src("jirl-out-harmonized")
        page.click("#jirl-compare input[value='harmonized']")
        page.wait_for_change("jirl-out-harmonized", before)
        np.testing.assert_array_equal(page.image_pixels("jirl-out-harmonized"), harmonized)
        # A region painted in the drawing panel is harmonized instead of the localizer's: outside
        # it, the overlay and the harmonized photo are the photo's pixels.
        page.paint([(-40 + 8 * k, -20 + 4 * k) for k in range(11)])
        page.click_until_result("#jirl-draw-run", result_panel="jirl-out-overlay")
        assert page.status().startswith("dirl on 96×64"), page.status()
        painted = (page.image_pixels("jirl-out-overlay") != photo).any(-1)
        assert 0.05 < painted.mean() < 0.6, painted.mean()
        rows, cols = np.nonzero(painted)
        assert 16 <= rows.mean() <= 48 and 24 <= cols.mean() <= 72  # about the canvas's centre
        harmonized = page.image_pixels("jirl-out-harmonized")
        np.testing.assert_array_equal(harmonized[~painted], photo[~painted])
        assert (harmonized[painted] != photo[painted]).any()
        shot = page.screenshot(os.path.join(artifacts, "demo_browser.png"))
        # A corrupt upload is a message on the page; the server goes on serving.
        page.clear()
        page.upload(str(tmp_path / "corrupt.jpg"))
        assert page.status().startswith("Error: corrupt.jpg is not a usable image"), page.status()
        assert page.image_size("jirl-out-mask") is None
        page.clear()
        page.upload(str(tmp_path / "huge.png"))
        assert page.status().startswith("Error: the photo is 400×400 (0 MP), more than this demo "
                                         "accepts"), page.status()
        page.clear()
        page.upload(str(tmp_path / "photo.png"))
        assert page.image_size("jirl-out-mask") == (96, 64)
        # A file over --max_file_mb: Gradio refuses it before jirl sees it, with a message.
        page.clear()
        page.find("#jirl-photo input[type=file]").send_keys(str(tmp_path / "heavy.png"))
        page.wait_until(lambda: "exceed the maximum allowed size" in page.text(), "the size error")
        # A sample composite (here 384 x 384) runs when picked.
        page.pick_sample(0)
        assert page.status().startswith("dirl on 384×384"), page.status()
        assert page.image_size("jirl-out-mask") == (384, 384)
        assert server.process.poll() is None
        log = server.output()
        assert f"the demo page: http://127.0.0.1:{server.port}" in log  # loopback by default
        assert "share=True" not in log  # Gradio's hint for a flag jirl does not have
    assert os.path.getsize(shot) > 10_000
    print(f"screenshot: {shot}")

"""Test tooling, not part of the jirl package: the demo page driven in a real, headless
Chromium, Debian's `chromium` and `chromedriver` through Selenium (which is told where both are,
so it downloads nothing).

Used by the end-to-end test (tests/test_demo_browser.py) and by benchmarks/demo_latency.py:

    with DemoServer(["--checkpoint", ckpt], port) as server, DemoBrowser(server.url) as page:
        seconds = page.upload(photo)            # until the result (or an error) is on the page
        page.image_size("jirl-out-mask")        # the mask's (width, height) as shown
        page.screenshot("demo.png")
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

from jirl import files

CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    # This machine has no network beyond loopback: keep Chromium from calling home.
    "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps",
    "--window-size=1500,1100",
)
INSTALL_HINT = "apt-get install chromium chromium-driver (Debian), or set JIRL_CHROMIUM / JIRL_CHROMEDRIVER"


class BrowserMissing(RuntimeError):
    """No Chromium or ChromeDriver on this machine."""


def find_chromium() -> tuple[str, str]:
    """(chromium, chromedriver) executables: $JIRL_CHROMIUM / $JIRL_CHROMEDRIVER, else on PATH."""
    browser = os.environ.get("JIRL_CHROMIUM") or shutil.which("chromium") or shutil.which(
        "chromium-browser")
    driver = os.environ.get("JIRL_CHROMEDRIVER") or shutil.which("chromedriver")
    if not browser or not driver:
        raise BrowserMissing(f"no Chromium / ChromeDriver found: {INSTALL_HINT}")
    return browser, driver


class DemoServer:
    """`python -m jirl.demo *args --port PORT` in a subprocess, until it answers HTTP."""

    def __init__(self, args: list[str], port: int, env: dict | None = None, timeout: float = 240):
        self.url = f"http://127.0.0.1:{port}/"
        self.args, self.port, self.env, self.timeout = args, port, env, timeout
        self.log = tempfile.NamedTemporaryFile("w+", prefix="jirl-demo-", suffix=".log", delete=False)
        self.process: subprocess.Popen | None = None
        self.ready_seconds = 0.0

    def __enter__(self) -> DemoServer:
        start = time.perf_counter()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jirl.demo", *self.args, "--port", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the demo exited with {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2):
                    break
            except OSError:
                if time.perf_counter() - start > self.timeout:
                    raise TimeoutError(f"the demo did not answer in {self.timeout} s:\n"
                                       f"{self.output()}") from None
                time.sleep(0.5)
        self.ready_seconds = time.perf_counter() - start
        return self

    def output(self) -> str:
        self.log.flush()
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()[-6000:]

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()
        os.unlink(self.log.name)


class DemoBrowser:
    """The demo page in headless Chromium."""

    def __init__(self, url: str, timeout: float = 120):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        browser, driver = find_chromium()
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        self._profile = tempfile.mkdtemp(prefix="jirl-chromium-")
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={self._profile}"):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(executable_path=driver), options=options)
        self.url, self.timeout = url, timeout

    def __enter__(self) -> DemoBrowser:
        self.driver.get(self.url)
        self.wait_until(lambda: self.status() != "", "the page to load")
        return self

    def __exit__(self, *exc) -> None:
        self.driver.quit()
        shutil.rmtree(self._profile, ignore_errors=True)

    def wait_until(self, condition, what: str) -> None:
        start = time.perf_counter()
        while not condition():
            if time.perf_counter() - start > self.timeout:
                raise TimeoutError(f"waited {self.timeout} s for {what}; the page says: "
                                   f"{self.status()!r}")
            time.sleep(0.05)

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found else None

    def status(self) -> str:
        """The status line's text ("" before the page has rendered it)."""
        element = self.find("#jirl-status")
        return element.text.strip() if element is not None else ""

    def image_src(self, elem_id: str) -> str | None:
        """The address of the loaded picture in panel `elem_id` (None while empty or loading)."""
        return self.driver.execute_script(
            "const i = document.querySelector(arguments[0]);"
            "return i && i.complete && i.naturalWidth > 0 ? i.currentSrc : null;",
            f"#{elem_id} img")

    def image_size(self, elem_id: str) -> tuple[int, int] | None:
        """(naturalWidth, naturalHeight) of the picture in panel `elem_id`; None when empty."""
        size = self.driver.execute_script(
            "const i = document.querySelector(arguments[0]);"
            "return i && i.complete && i.naturalWidth > 0 ? [i.naturalWidth, i.naturalHeight] : null;",
            f"#{elem_id} img")
        return tuple(size) if size else None

    def image_pixels(self, elem_id: str):
        """The RGB pixels of the picture in panel `elem_id` as the page decoded them: uint8
        [H, W, 3] at its natural size (read back through a canvas)."""
        import numpy as np

        data = self.driver.execute_script(
            "const i = document.querySelector(arguments[0]);"
            "const c = document.createElement('canvas');"
            "c.width = i.naturalWidth; c.height = i.naturalHeight;"
            "const g = c.getContext('2d'); g.drawImage(i, 0, 0);"
            "return [c.width, c.height, Array.from(g.getImageData(0, 0, c.width, c.height).data)];",
            f"#{elem_id} img")
        width, height, rgba = data
        return np.asarray(rgba, np.uint8).reshape(height, width, 4)[..., :3]

    def wait_for_change(self, elem_id: str, before: str | None) -> None:
        """Waits until panel `elem_id` shows a loaded picture other than the one at `before`."""
        self.wait_until(lambda: self.image_src(elem_id) not in (None, before),
                   f"a new picture in #{elem_id}")

    def _until_result(self, action, what: str, result_panel: str) -> float:
        """Runs `action`, then waits until the page shows a new status and either an error or a
        new, fully loaded picture in `result_panel`; returns the seconds it took."""
        before_status, before_src = self.status(), self.image_src(result_panel)
        start = time.perf_counter()
        action()

        def shown() -> bool:
            status = self.status()
            if status in (before_status, "", "Upload a photo."):
                return False
            if status.startswith("Error"):
                return True
            src = self.image_src(result_panel)
            return src is not None and src != before_src

        self.wait_until(shown, what)
        return time.perf_counter() - start

    def upload(self, path: str, elem_id: str = "jirl-photo", result_panel: str = "jirl-out-mask"
               ) -> float:
        """Uploads `path` to the file input of `elem_id`; the seconds until the result (or an
        error) is on the page."""
        file_input = self.find(f"#{elem_id} input[type=file]")
        if file_input is None:
            raise RuntimeError(f"no file input in #{elem_id}")
        return self._until_result(lambda: file_input.send_keys(os.path.abspath(path)),
                                  f"the result of {os.path.basename(path)}", result_panel)

    def pick_sample(self, index: int, result_panel: str = "jirl-out-mask") -> float:
        """Clicks sample composite `index`; the seconds until its result is on the page."""
        buttons = self.driver.find_elements("css selector", "#jirl-samples button.gallery-item")
        return self._until_result(buttons[index].click, f"the result of sample {index}",
                                  result_panel)

    def paint(self, points: list[tuple[int, int]], elem_id: str = "jirl-draw") -> None:
        """One brush stroke in the drawing panel `elem_id` (opened first if it sits in a closed
        accordion) through `points`, CSS pixels from the canvas's centre."""
        from selenium.webdriver.common.action_chains import ActionChains

        canvases = self.driver.find_elements("css selector", f"#{elem_id} canvas")
        if not canvases or not canvases[-1].is_displayed():
            self.find(f"#{elem_id}-panel button").click()  # the accordion's header
            self.wait_until(lambda: self.find(f"#{elem_id} canvas") is not None, "the canvas")
            canvases = self.driver.find_elements("css selector", f"#{elem_id} canvas")
        canvas = canvases[-1]
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
        (x, y), *rest = points
        stroke = ActionChains(self.driver).move_to_element_with_offset(canvas, x, y).click_and_hold()
        for nx, ny in rest:
            stroke.move_by_offset(nx - x, ny - y)
            x, y = nx, ny
        stroke.release().perform()

    def click_until_result(self, css: str, result_panel: str = "jirl-out-mask") -> float:
        """Clicks `css`; the seconds until a new result (or an error) is on the page."""
        return self._until_result(lambda: self.find(css).click(), f"the result of {css}",
                                  result_panel)

    def text(self) -> str:
        """All the text on the page (Gradio's error pop-ups included)."""
        return self.driver.execute_script("return document.body.innerText")

    def clear(self, elem_id: str = "jirl-photo") -> None:
        """Empties the file input (its clear button), so that the next upload is a change."""
        button = self.find(f"#{elem_id} button[aria-label='Clear']")
        if button is not None:
            button.click()
            self.wait_until(lambda: self.find(f"#{elem_id} input[type=file]") is not None,
                       "the upload area")

    def click(self, css: str) -> None:
        self.find(css).click()

    def screenshot(self, path: str) -> str:
        """A PNG of the whole page, beyond the window's height too (Chromium's DevTools
        protocol), written atomically."""
        import base64

        self.driver.execute_script("window.scrollTo(0, 0)")
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        with files.atomic_write(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        return path

"""The demo page's latency as a user sees it: `python -m jirl.demo` on loopback, driven by
headless Chromium (tests/demo_browser.py), a photo uploaded, timed until the result is on the page
(upload, decode, localize, harmonize, PNG encoding, transfer and the browser's decoding of every
picture). Prints JSON; saves a screenshot of the page with the first result.

The photos are embedded synthetic test composites (real photos, one region recoloured) cut to
--size; each repeat uploads another one.

  python benchmarks/demo_latency.py --checkpoint runs/dirl_quick --harmonizer runs/rainnet_quick \
      --screenshot docs/demo.png
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from jirl.cpu import cpu_info  # noqa: E402


def composite(index: int, height: int, width: int) -> np.ndarray:
    """Synthetic test composite `index` at height x width: made at the longer side, then the
    middle cut (the region may be cut too)."""
    from jirl.data import synthetic

    side = max(height, width)
    image = synthetic.generate_example("test", index, image_size=side)["composite"]
    top, left = (side - height) // 2, (side - width) // 2
    return np.ascontiguousarray(image[top:top + height, left:left + width])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="localizer checkpoint")
    parser.add_argument("--harmonizer", default=None, help="harmonizer checkpoint")
    parser.add_argument("--size", default="768x512", help="photo WIDTHxHEIGHT")
    parser.add_argument("--policy", default="train", choices=["train", "native", "long_side"])
    parser.add_argument("--repeats", type=int, default=5, help="uploads after the first")
    parser.add_argument("--start", type=int, default=0, help="index of the first composite")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--port", type=int, default=7871)
    parser.add_argument("--screenshot", default=None, help="PNG of the page with the first result")
    args = parser.parse_args()

    sys.path.insert(0, os.path.join(ROOT, "tests"))  # the browser driver is test tooling
    from demo_browser import DemoBrowser, DemoServer

    width, height = (int(v) for v in args.size.lower().split("x"))
    folder = tempfile.mkdtemp(prefix="jirl-demo-latency-")
    paths = []
    for i in range(args.start, args.start + args.repeats + 1):
        paths.append(os.path.join(folder, f"composite_{i}_{width}x{height}.png"))
        Image.fromarray(composite(i, height, width)).save(paths[-1])
    server_args = ["--checkpoint", args.checkpoint, "--dtype", args.dtype, "--compile_cache", "",
                   "--resize", args.policy]
    if args.harmonizer:
        server_args += ["--harmonizer", args.harmonizer]
    seconds, statuses = [], []
    with DemoServer(server_args, args.port) as server:
        start = time.perf_counter()
        with DemoBrowser(server.url) as page:
            page_seconds = time.perf_counter() - start
            for i, path in enumerate(paths):
                if i:
                    page.clear()
                seconds.append(page.upload(path))
                statuses.append(page.status())
                if statuses[-1].startswith("Error"):
                    raise SystemExit(f"the page shows an error: {statuses[-1]}")
                if i == 0 and args.screenshot:
                    page.screenshot(args.screenshot)
            shown = page.image_size("jirl-out-mask")
    print(json.dumps({
        "benchmark": "demo_latency", "photo": [width, height], "composites": [
            args.start, args.start + args.repeats], "policy": args.policy,
        "checkpoint": args.checkpoint, "harmonizer": args.harmonizer, "dtype": args.dtype,
        "server_ready_s": round(server.ready_seconds, 2), "page_load_s": round(page_seconds, 2),
        "first_upload_to_result_s": round(seconds[0], 3),
        "upload_to_result_s": [round(s, 3) for s in seconds[1:]],
        "median_upload_to_result_s": round(statistics.median(seconds[1:]), 3) if args.repeats else None,
        "mask_shown": shown, "first_status": statuses[0], "last_status": statuses[-1],
        "screenshot": args.screenshot, "cpu": cpu_info(), "python": platform.python_version(),
    }, indent=1))


if __name__ == "__main__":
    main()

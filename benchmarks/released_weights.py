"""The released weights straight into `jirl predict`: the first run (recognition, conversion into
the cache, prediction) against the second (hashing the files, the cached conversion); prints JSON.

  python benchmarks/released_weights.py --checkpoint Inharmonious_G.pth,IHDRNet.pth --input photos/
  python benchmarks/released_weights.py --synthetic_libcom     # full-size libcom-format files
                                                               # (random weights) and 8 photos

Each run is `jirl predict` in a fresh process with an empty cache folder of its own
($XDG_CACHE_HOME), so the first run converts and the second finds the conversion; the compile
cache is off, so both compile. Needs torch (the files are PyTorch's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def synthetic_libcom(folder: str) -> str:
    """libcom's `Inharmonious_G.pth` + `IHDRNet.pth` at the official size, with the parity
    fixture's regenerated random weights (tests/fixtures/README.md), in `folder`."""
    import numpy as np
    import torch

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_unet import synthetic_tensor

    with np.load(os.path.join(ROOT, "tests", "fixtures", "madisnet.npz")) as f:
        index, stored = json.loads(str(f["index"]))["dirl"], f["dirl/stored"]
    sd = {k: synthetic_tensor(k, tuple(s)) for k, s in index["synthetic"].items()}
    keys, sizes = zip(*index["stored"], strict=True)
    bounds = np.cumsum([0, *sizes])
    sd.update({k: stored[a:b].astype(np.float32)
               for k, a, b in zip(keys, bounds[:-1], bounds[1:], strict=True)})
    paths = []
    for part, name in (("g", "Inharmonious_G.pth"), ("ihdrnet", "IHDRNet.pth")):
        state = {k.partition(".")[2]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()
                 if k.startswith(part + ".")}
        torch.save({"epoch": 60, "best_acc": 0.7, "state_dict": state}, os.path.join(folder, name))
        paths.append(os.path.join(folder, name))
    return ",".join(paths)


def photos(folder: str, count: int = 8) -> str:
    """`count` synthetic test composites at 640 x 480 in `folder`."""
    from PIL import Image

    from jirl.data import synthetic

    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        example = synthetic.generate_example("test", i, image_size=480, seed=0)
        Image.fromarray(example["composite"]).resize((640, 480)).save(os.path.join(folder, f"{i}.jpg"))
    return folder


def predict(checkpoint: str, input_: str, cache: str, output: str, dtype: str) -> dict:
    env = dict(os.environ, XDG_CACHE_HOME=cache)
    start = time.perf_counter()
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "jirl"), "predict",
                           "--checkpoint", checkpoint, "--input", input_, "--output", output,
                           "--compile_cache=", "--dtype", dtype], env=env, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    said = [line for line in proc.stderr.splitlines() if "convert" in line]
    return {"seconds": round(seconds, 2), "said": said, "summary": proc.stdout.splitlines()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="the released files, comma-separated (or their folder)")
    parser.add_argument("--input", help="the photos (default with --synthetic_libcom: 8 composites)")
    parser.add_argument("--synthetic_libcom", action="store_true")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="jirl-released-")
    checkpoint = synthetic_libcom(work) if args.synthetic_libcom else args.checkpoint
    input_ = args.input or photos(os.path.join(work, "photos"))
    cache = os.path.join(work, "cache")
    first = predict(checkpoint, input_, cache, os.path.join(work, "out1"), args.dtype)
    second = predict(checkpoint, input_, cache, os.path.join(work, "out2"), args.dtype)
    sizes = {os.path.basename(p): os.path.getsize(p) for p in checkpoint.split(",") if os.path.isfile(p)}
    print(json.dumps({"benchmark": "released_weights", "files": sizes,
                      "first_run": first, "second_run": second, "dtype": args.dtype,
                      "machine": platform.processor() or platform.machine(),
                      "cpu_count": os.cpu_count()}))


if __name__ == "__main__":
    main()

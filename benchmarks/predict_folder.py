"""predict.py's engine on a folder of photos as users have them; prints JSON.

Builds (once, in --folder) 34 files from the embedded synthetic test composites, each resized to
another size and orientation: portrait, 4:3, 16:9, square, tiny (24 x 32) and large (> 2000 px)
photos, an RGBA PNG, a grey JPEG, a palette PNG, a 16-bit PNG, an EXIF-rotated JPEG, and a corrupt
file. Then runs `jirl.predict.Predictor` over it and reports wall time, photos/s, the number of
compilations and whether every output has its photo's (upright) size.

  python benchmarks/predict_folder.py --checkpoint runs/dirl_quick [--resize native]
  python benchmarks/predict_folder.py          # a randomly initialized DIRL at full width
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

# (height, width) of the 30 ordinary photos: every common shape, tiny and > 2000 px ones
SIZES = [(480, 640), (640, 480), (720, 1280), (1280, 720), (1080, 1920), (1920, 1080),
         (768, 1024), (1024, 768), (600, 800), (800, 600), (512, 512), (1000, 1000),
         (2400, 3200), (3200, 2400), (2160, 3840), (24, 32), (32, 24), (48, 48), (90, 160),
         (160, 90), (300, 400), (400, 300), (375, 500), (500, 375), (333, 500), (427, 640),
         (640, 427), (1536, 2048), (2048, 1536), (256, 256)]


def build_folder(folder: str) -> dict[str, tuple[int, int]]:
    """Writes the photos; returns {name: (height, width) as displayed} of the readable ones."""
    from jirl.data import synthetic

    os.makedirs(os.path.join(folder, "more"), exist_ok=True)
    expected = {}

    def composite(i: int, h: int, w: int) -> np.ndarray:
        example = synthetic.generate_example("test", i, image_size=256, seed=0)
        return np.asarray(Image.fromarray(np.asarray(example["composite"])).resize(
            (w, h), Image.Resampling.BICUBIC))

    for i, (h, w) in enumerate(SIZES):
        name = f"{'more/' if i % 3 == 0 else ''}photo_{i:02d}_{w}x{h}"
        Image.fromarray(composite(i, h, w)).save(os.path.join(folder, name + ".jpg"), quality=92)
        expected[name] = (h, w)
    rgba = np.concatenate([composite(30, 300, 450), np.full((300, 450, 1), 200, np.uint8)], -1)
    Image.fromarray(rgba).save(os.path.join(folder, "rgba.png"))
    Image.fromarray(composite(31, 480, 360)[..., 1]).save(os.path.join(folder, "grey.jpg"))
    Image.fromarray(composite(32, 200, 300)).convert("P").save(os.path.join(folder, "palette.png"))
    deep = composite(33, 240, 320).mean(-1).astype(np.uint16) * 257
    Image.fromarray(deep).save(os.path.join(folder, "deep16.png"))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated: 600 x 800 stored, 800 x 600 displayed
    Image.fromarray(composite(34, 600, 800)).save(os.path.join(folder, "rotated.jpg"), exif=exif)
    with open(os.path.join(folder, "corrupt.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0" + bytes(200))
    expected.update({"rgba": (300, 450), "grey": (480, 360), "palette": (200, 300),
                     "deep16": (240, 320), "rotated": (800, 600)})
    return expected


def random_checkpoint(directory: str) -> str:
    """A randomly initialized DIRL at the official width, written as a checkpoint."""
    import jax
    from jirl.configs import dirl as dirl_config

    from jirl.models import build_model, init_model_variables
    from jirl.runtime.checkpoints import write_model_checkpoint

    config = dirl_config.get_config()
    _, model = build_model(config)
    variables = jax.device_get(init_model_variables(config, model))
    return write_model_checkpoint(directory, variables, {
        "model": "dirl", "config": json.loads(config.to_json_best_effort())})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="localizer checkpoint (default: random DIRL)")
    parser.add_argument("--harmonizer", help="also harmonize the detected regions")
    parser.add_argument("--resize", default="train", choices=["train", "native", "long_side"])
    parser.add_argument("--long_side", type=int, default=None)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--folder", default=None, help="where the photos go (default: a temp dir)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="the localizer's (jirl.inference.inference_dtype; default as predict.py)")
    args = parser.parse_args()

    import jax

    from jirl.inference import Harmonizer, Localizer
    from jirl.predict import Predictor, find_photos

    work = tempfile.mkdtemp(prefix="jirl_predict_bench_")
    folder = args.folder or os.path.join(work, "photos")
    expected = build_folder(folder)
    checkpoint = args.checkpoint or random_checkpoint(os.path.join(work, "dirl_random"))
    start = time.perf_counter()
    localizer = Localizer.from_checkpoint(checkpoint, resize=args.resize,
                                          long_side=args.long_side, dtype=args.dtype)
    harmonizer = Harmonizer.from_checkpoint(args.harmonizer) if args.harmonizer else None
    load_seconds = time.perf_counter() - start
    out = os.path.join(work, "out")
    photos = find_photos(folder, exclude=out)
    summary = Predictor(out, localizer=localizer, harmonizer=harmonizer,
                        batch_size=args.batch_size).run(photos, progress=False)
    records = [json.loads(line) for line in open(os.path.join(out, "predictions.jsonl"))]
    wrong = []
    for r in records:
        want = expected[r["name"]]
        for kind, rel in r["outputs"].items():
            with Image.open(os.path.join(out, rel)) as im:
                if (im.height, im.width) != want:
                    wrong.append(f"{r['name']} {kind}: {im.height}x{im.width}, photo {want}")
    per_photo = sorted(r["seconds"] for r in records)
    print(json.dumps({
        "benchmark": "predict_folder", "checkpoint": checkpoint if args.checkpoint else "random dirl",
        "model": localizer.name, "resize": args.resize, "long_side": args.long_side,
        "dtype": localizer.loaded.config.dtype, "batch_size": args.batch_size,
        "files": len(photos), "written": summary.written, "skipped": len(summary.skipped),
        "skipped_files": [os.path.basename(f) for f, _ in summary.skipped],
        "wall_seconds": round(summary.seconds, 2), "photos_per_sec": round(
            summary.written / summary.seconds, 3), "restore_seconds": round(load_seconds, 2),
        "compilations": summary.compilations,
        "compile_seconds": round(localizer.compile_seconds, 2),
        "median_seconds_per_photo": per_photo[len(per_photo) // 2],
        "largest_photo": max(expected.values(), key=lambda s: s[0] * s[1]),
        "every_output_has_the_photos_size": not wrong, "wrong_sizes": wrong[:10],
        "backend": jax.default_backend(), "devices": len(jax.local_devices()),
        "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
    }, indent=1))
    if not args.folder:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

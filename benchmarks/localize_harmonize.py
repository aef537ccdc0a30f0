"""Localize, then harmonize: a localizer's predicted region fed to a harmonizer, on the embedded
synthetic test composites, scored against the real images next to harmonizing the ground-truth
region and to doing nothing. Prints JSON; writes a contact sheet
(composite | predicted mask | harmonized with it | real).

  python benchmarks/localize_harmonize.py --localizer runs/dirl_quick \\
      --harmonizer runs/rainnet_quick --sheet docs/localize_harmonize.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--localizer", required=True)
    parser.add_argument("--harmonizer", required=True)
    parser.add_argument("--count", type=int, default=100, help="test composites (the split: 100)")
    parser.add_argument("--image_size", type=int, default=64, help="side of the composites")
    parser.add_argument("--seed", type=int, default=0, help="the synthetic data's seed")
    parser.add_argument("--sheet", default=None, help="contact sheet PNG path")
    parser.add_argument("--rows", type=int, default=6)
    args = parser.parse_args()

    import jax.numpy as jnp

    from jirl import metrics, visualize
    from jirl.data import synthetic
    from jirl.inference import Harmonizer, Localizer, binary_mask

    loc = Localizer.from_checkpoint(args.localizer)
    harm = Harmonizer.from_checkpoint(args.harmonizer)
    scores: dict[str, list] = {"predicted_mask": [], "ground_truth_mask": [], "composite": []}
    ious, rows = [], []
    start = time.perf_counter()
    for i in range(args.count):
        ex = synthetic.generate_example("test", i, image_size=args.image_size, seed=args.seed)
        comp, real = np.asarray(ex["composite"]), np.asarray(ex["real"])
        gt = np.asarray(ex["mask"])[..., 0] > 127
        prob = loc(comp)
        pred = binary_mask(prob)
        outputs = {"predicted_mask": harm(comp, pred), "ground_truth_mask": harm(comp, gt),
                   "composite": comp}
        for name, image in outputs.items():
            m = metrics.harmonization_metrics(jnp.asarray(image[None] / 255.0, jnp.float32),
                                              jnp.asarray(real[None] / 255.0, jnp.float32),
                                              jnp.asarray(gt[None, ..., None], jnp.float32))
            scores[name].append({k: float(v[0]) for k, v in m.items()})
        ious.append(float((pred & gt).sum() / max(1, (pred | gt).sum())))
        if len(rows) < args.rows:
            rows.append([comp / 255.0, prob, outputs["predicted_mask"] / 255.0, real / 255.0])
    seconds = time.perf_counter() - start
    summary = {name: {k: round(float(np.mean([r[k] for r in rs])), 3) for k in ("mse", "psnr", "fmse")}
               for name, rs in scores.items()}
    if args.sheet:
        scale = max(1, 128 // args.image_size)
        visualize.save_png(args.sheet, visualize.contact_sheet(rows, scale=scale))
    print(json.dumps({
        "benchmark": "localize_harmonize", "localizer": loc.loaded.checkpoint, "localizer_model": loc.name,
        "harmonizer": harm.loaded.checkpoint, "harmonizer_model": harm.name,
        "composites": args.count, "image_size": args.image_size,
        "predicted_mask_iou": round(float(np.mean(ious)), 3), "scores": summary,
        "sheet": args.sheet, "seconds": round(seconds, 1),
    }, indent=1))


if __name__ == "__main__":
    main()

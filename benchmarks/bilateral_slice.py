"""Speed of iHDRNet's bilateral slice alone, per formulation; prints one JSON line.

  python benchmarks/bilateral_slice.py                       # 256 px, batch 8, the MadisNet setting
  python benchmarks/bilateral_slice.py --size 1024 --batch 1 --methods gather

The slice runs at full resolution on every image (`jirl.models.ihdrnet.bilateral_slice`): a
[B, 16, 16, 16, 12] grid sampled at B x S x S pixels by a guide map. For each method ("gather":
8 corner reads per pixel; "onehot": fixed spatial interpolation matrices and a two-hot luma
weighting) a fresh subprocess compiles and times the jitted forward pass and the forward +
backward pass (gradients w.r.t. grid and guide, as training needs), and reports its peak resident
memory, so one method's memory does not leak into the other's.
"""

import json
import os
import subprocess
import sys
import time

from absl import app, flags
from common import peak_rss_gb

flags.DEFINE_integer("batch", 8, "Images per batch.")
flags.DEFINE_integer("size", 256, "Square image size (pixels per side).")
flags.DEFINE_integer("grid", 16, "Grid cells per side (the official 256 px / 16).")
flags.DEFINE_integer("luma_bins", 16, "Luma bins of the grid.")
flags.DEFINE_integer("steps", 10, "Timed calls of each function (after compile and one warm-up).")
flags.DEFINE_list("methods", ["gather", "onehot"], "Formulations to measure.")
flags.DEFINE_string("child", "", "Internal: measure this method in this process.")
FLAGS = flags.FLAGS


def _time(fn, args, steps: int) -> tuple[float, float]:
    """(compile seconds, mean seconds per call) of a jitted fn."""
    import jax

    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))
    start = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(compiled(*args))
    return compile_s, (time.perf_counter() - start) / steps


def measure(method: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jirl.models.ihdrnet import bilateral_slice

    rng = np.random.default_rng(0)
    b, s, g = FLAGS.batch, FLAGS.size, FLAGS.grid
    grid = jnp.asarray(rng.standard_normal((b, g, g, FLAGS.luma_bins, 12)), jnp.float32)
    guide = jnp.asarray(np.tanh(rng.standard_normal((b, s, s))), jnp.float32)
    weights = jnp.asarray(rng.standard_normal((b, s, s, 12)), jnp.float32)

    def forward(grid, guide):
        return bilateral_slice(grid, guide, method)

    def loss(grid, guide):
        return jnp.sum(bilateral_slice(grid, guide, method) * weights)

    compile_f, forward_s = _time(forward, (grid, guide), FLAGS.steps)
    compile_b, backward_s = _time(jax.grad(loss, (0, 1)), (grid, guide), FLAGS.steps)
    return {"method": method, "forward_images_per_sec": b / forward_s,
            "forward_ms": 1e3 * forward_s, "forward_backward_images_per_sec": b / backward_s,
            "forward_backward_ms": 1e3 * backward_s, "compile_seconds_forward": compile_f,
            "compile_seconds_forward_backward": compile_b, "peak_rss_gb": peak_rss_gb()}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if FLAGS.child:
        print(json.dumps(measure(FLAGS.child)))
        return 0
    import jax

    result = {"benchmark": "bilateral_slice", "batch": FLAGS.batch, "size": FLAGS.size,
              "grid": [FLAGS.grid, FLAGS.grid, FLAGS.luma_bins, 12], "backend": jax.default_backend(),
              "cpu_count": os.cpu_count()}
    for method in FLAGS.methods:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), f"--child={method}", f"--batch={FLAGS.batch}",
             f"--size={FLAGS.size}", f"--grid={FLAGS.grid}", f"--luma_bins={FLAGS.luma_bins}",
             f"--steps={FLAGS.steps}"],
            capture_output=True, text=True)
        if proc.returncode != 0:
            result[method] = {"error": proc.stderr.strip().splitlines()[-5:], "rc": proc.returncode}
        else:
            result[method] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    app.run(main)

"""Train / inference throughput of one model; prints one JSON line.

  python benchmarks/train_step.py --model dirl --batch 8 --size 224 [--dtypes float32,bfloat16]
  python benchmarks/train_step.py --model rsrnet --set model.remat=True

For each compute dtype a fresh subprocess builds the model at the config's official setting
(`configs/<model>.py`), compiles the jitted train step and the inference forward, times
`--steps` steps after a warm-up, and reports its peak resident memory (ru_maxrss), so the
figures of one dtype do not leak into the other's. Random inputs: the data pipeline is
measured by benchmarks/input_pipeline.py.
"""

import ast
import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

flags.DEFINE_string("model", "dirl", "Model (its config file is configs/<model>.py).")
flags.DEFINE_integer("batch", 8, "Global batch size.")
flags.DEFINE_integer("size", 224, "Square input size.")
flags.DEFINE_integer("steps", 3, "Timed train steps (after compile and one warm-up step).")
flags.DEFINE_integer("infer_steps", 5, "Timed inference batches (after compile).")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes to measure.")
flags.DEFINE_multi_string("set", [], "Config override key=value, e.g. --set model.remat=True.")
flags.DEFINE_string("child", "", "Internal: measure this dtype in this process.")
FLAGS = flags.FLAGS


def _override(kv: str) -> tuple[str, object]:
    key, sep, value = kv.partition("=")
    if not sep:
        raise app.UsageError(f"--set takes key=value, got {kv!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a plain string


def measure(dtype: str) -> dict:
    import importlib

    import jax
    import numpy as np

    from jirl.models import build_model, init_model_variables
    from jirl.training import mesh as jmesh
    from jirl.training.optim import make_optimizer
    from jirl.training.state import create_train_state
    from jirl.training.steps import compile_step, make_train_step

    config = importlib.import_module(f"configs.{FLAGS.model}").get_config()
    config.dtype, config.batch_size, config.data.crop_size = dtype, FLAGS.batch, FLAGS.size
    config.update_from_flattened_dict(dict(_override(kv) for kv in FLAGS.set))
    spec, model = build_model(config)
    mesh = jmesh.make_mesh()
    repl = jmesh.replicated(mesh)
    state = jax.device_put(create_train_state(
        model, make_optimizer(config.optimizer, 1000), init_model_variables(config, model)), repl)
    rng = np.random.default_rng(0)
    mask = np.zeros((FLAGS.batch, FLAGS.size, FLAGS.size, 1), np.float32)
    mask[:, FLAGS.size // 4:FLAGS.size // 2, FLAGS.size // 3:FLAGS.size // 2] = 1
    batch = jmesh.put_batch({"image": rng.normal(size=(FLAGS.batch, FLAGS.size, FLAGS.size, 3))
                             .astype(np.float32), "mask": mask}, mesh)
    step = jax.jit(make_train_step(spec, config), donate_argnums=0, out_shardings=(repl, repl))
    t0 = time.perf_counter()
    step = compile_step(step, state, batch)  # as the training loop does
    compile_train = time.perf_counter() - t0
    state, logs = step(state, batch)
    jax.block_until_ready(logs["loss"])
    t0 = time.perf_counter()
    for _ in range(FLAGS.steps):
        state, logs = step(state, batch)
    jax.block_until_ready(logs["loss"])
    step_s = (time.perf_counter() - t0) / FLAGS.steps
    infer = jax.jit(lambda v, x: model.apply(v, x, train=False)["mask"])
    t0 = time.perf_counter()
    jax.block_until_ready(infer(state.variables(), batch["image"]))
    compile_infer = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(FLAGS.infer_steps):
        out = infer(state.variables(), batch["image"])
    jax.block_until_ready(out)
    infer_s = (time.perf_counter() - t0) / FLAGS.infer_steps
    return {"dtype": dtype, "train_images_per_sec": FLAGS.batch / step_s, "step_seconds": step_s,
            "inference_images_per_sec": FLAGS.batch / infer_s,
            "compile_seconds_train": compile_train, "compile_seconds_inference": compile_infer,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "final_loss": float(logs["loss"])}


def main(argv):
    del argv
    if FLAGS.child:
        print(json.dumps(measure(FLAGS.child)))
        return 0
    import jax

    result = {"benchmark": "train_step", "model": FLAGS.model, "overrides": FLAGS.set, "batch": FLAGS.batch,
              "size": FLAGS.size, "backend": jax.default_backend(),
              "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count()}
    for dtype in FLAGS.dtypes:
        proc = subprocess.run(
            [sys.executable, __file__, f"--child={dtype}", f"--model={FLAGS.model}",
             f"--batch={FLAGS.batch}", f"--size={FLAGS.size}", f"--steps={FLAGS.steps}",
             f"--infer_steps={FLAGS.infer_steps}", *(f"--set={kv}" for kv in FLAGS.set)],
            cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            result[dtype] = {"error": proc.stderr.strip().splitlines()[-5:], "rc": proc.returncode}
        else:
            result[dtype] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    app.run(main)

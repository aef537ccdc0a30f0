"""Input-pipeline throughput next to the train step's consumption; prints one JSON object.

  python benchmarks/input_pipeline.py --config configs/dirl.py            # 224 px, synthetic data
  python benchmarks/input_pipeline.py --config configs/dirl.py --workers=0,2 --step_steps=3
  python benchmarks/input_pipeline.py --config configs/dirl.py:quick --config.batch_size=2 \
      --config.data.num_train=40 --batches=3 --workers=0 --step_steps=1    # a quick check

`--config FILE[:variant]` (default configs/dirl.py) with `--config.key=value` overrides, as train.py
takes them: the pipeline, batch size and model are the config's.

Measures training examples/s of `jirl.data.train_batches` (augmentation, normalization, batching)
for each worker count, then the jitted train step's images/s for the same config (compile time
reported separately), and their ratio. Target: pipeline >= 5x the step's consumption.
"""

import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jirl import data as jdata  # noqa: E402
from jirl.models import build_model, init_model_variables  # noqa: E402
from jirl.runtime import flags as jflags  # noqa: E402
from jirl.runtime import mesh as jmesh  # noqa: E402
from jirl.training.optim import make_optimizer  # noqa: E402
from jirl.training.state import create_train_state  # noqa: E402
from jirl.training.steps import make_train_step  # noqa: E402

jflags.define_config_flag(default=os.path.join(ROOT, "configs", "dirl.py"), required=False)
flags.DEFINE_list("workers", ["0", "2"], "Grain worker counts to measure (0 = in-process).")
flags.DEFINE_integer("batches", 20, "Batches timed per worker count (after 2 warm-up batches).")
flags.DEFINE_integer("step_steps", 3, "Train steps timed (after one compile step); 0 = skip.")
FLAGS = flags.FLAGS


def pipeline_rate(config, workers: int, batches: int) -> dict:
    cfg = config.data.copy_and_resolve_references()
    cfg.num_workers = workers
    it = jdata.train_batches(cfg, batch_size=config.batch_size, seed=config.seed)
    for _ in range(2):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    elapsed = time.perf_counter() - start
    shape = list(batch["image"].shape)
    del it
    return {"num_workers": workers, "num_threads": int(cfg.num_threads),
            "examples_per_sec": batches * config.batch_size / elapsed, "batch_shape": shape}


def step_rate(config, steps: int) -> dict:
    spec, model = build_model(config)
    mesh = jmesh.make_mesh()
    repl = jmesh.replicated(mesh)
    state = jax.device_put(create_train_state(model, make_optimizer(config.optimizer, 1000, spec),
                                              init_model_variables(config, model)), repl)
    step = jax.jit(make_train_step(spec, config), donate_argnums=0, out_shardings=(repl, repl))
    it = jdata.train_batches(config.data, batch_size=config.batch_size, seed=config.seed)
    batches = [jmesh.put_batch(next(it), mesh, keys=("image", "mask")) for _ in range(steps + 2)]
    start = time.perf_counter()
    state, logs = step(state, batches[0])
    jax.block_until_ready(logs["loss"])
    compile_s = time.perf_counter() - start
    state, logs = step(state, batches[1])  # warm-up: the first call's timing includes compilation
    jax.block_until_ready(logs["loss"])
    start = time.perf_counter()
    for b in batches[2:]:
        state, logs = step(state, b)
    jax.block_until_ready(logs["loss"])
    elapsed = time.perf_counter() - start
    return {"images_per_sec": steps * config.batch_size / elapsed,
            "step_seconds": elapsed / steps, "first_step_seconds_with_compile": compile_s}


def main(argv):
    del argv
    config = FLAGS.config
    jdata.load_source(config.data, "train")  # prepare the data once, outside the timings
    pipes = [pipeline_rate(config, int(w), FLAGS.batches) for w in FLAGS.workers]
    result = {"benchmark": "input_pipeline", "model": config.model.name,
              "crop_size": int(config.data.crop_size), "batch_size": int(config.batch_size),
              "source": config.data.source, "backend": jax.default_backend(),
              "cpu_count": os.cpu_count(), "pipeline": pipes}
    if FLAGS.step_steps > 0:
        step = step_rate(config, FLAGS.step_steps)
        best = max(p["examples_per_sec"] for p in pipes)
        result.update(train_step=step, ratio_pipeline_to_step=best / step["images_per_sec"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    app.run(main)

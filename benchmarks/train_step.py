"""Train / inference throughput of one model; prints one JSON line.

  python benchmarks/train_step.py                                     # DIRL, batch 8, 224 px
  python benchmarks/train_step.py --config configs/dirl.py --dtypes float32
  python benchmarks/train_step.py --config configs/rsrnet.py --batch 8 --size 224 \\
      --config.model.remat=True --dtypes float32
  python benchmarks/train_step.py --config configs/dirl.py:quick      # the quick variant's setting
  python benchmarks/train_step.py --config rainnet --batch 8 --size 256 --dtypes float32
  python benchmarks/train_step.py --config rainnet:quick --batch 2 --size 64 --dtypes float32

The model is the one of `--config NAME[:variant]` or `--config FILE[:variant]` (default
configs/dirl.py), with `--config.key=value` overrides as `jirl train` takes them. `--batch B` and
`--size S` are shorthands for `--config.batch_size=B` and
`--config.data.crop_size=S`; without them the config's values are measured (configs/dirl.py:
batch 8, 224 px, the official setting; configs/rsrnet.py: batch 32; configs/rainnet.py: batch 11,
256 px). `--dtypes` sets `config.dtype` per measurement (default float32 and bfloat16, or only the
`--config.dtype=...` override when one is given).

A model trained in phases (RainNet: a discriminator step, then a generator step on the same
batch) is timed over its whole train step, D and G: its train img/s count each image once per
step. Its inference is the generator alone (`model.apply(train=False, mask=...)["harmonized"]`),
and its batch also carries the real image (`common.random_batch(real=True)`); "final_loss" is the
last phase's loss (RainNet: G's), "final_losses" every loss the step logs.

For each dtype a fresh subprocess (given the same config file and overrides) builds the model,
compiles the jitted train step ahead of time and the inference forward, times `--steps` train
steps after one warm-up step and `--infer_steps` forwards, and reports its peak resident memory
(ru_maxrss), so the figures of one dtype do not leak into the other's. Random inputs: the data
pipeline is measured by benchmarks/input_pipeline.py; the official PyTorch DIRL, MadisNet and
RainNet by benchmarks/compare_official.py.
"""

import json
import os
import subprocess
import sys

from absl import app, flags
from common import (
    DEFAULT_CONFIG,
    JirlBench,
    config_argv,
    config_overrides,
    is_harmonizer,
    peak_rss_gb,
    random_batch,
)
from ml_collections import config_flags

from jirl.runtime import flags as jflags

jflags.define_config_flag(default=DEFAULT_CONFIG, required=False)
flags.DEFINE_integer("batch", None, "Global batch size (= --config.batch_size; default: the config's).")
flags.DEFINE_integer("size", None, "Square input size (= --config.data.crop_size; default: the config's).")
flags.DEFINE_integer("steps", 3, "Timed train steps (after compile and one warm-up step).")
flags.DEFINE_integer("infer_steps", 5, "Timed inference batches (after compile).")
flags.DEFINE_list("dtypes", None, "Compute dtypes to measure (default: float32,bfloat16, or the "
                  "--config.dtype override).")
flags.DEFINE_string("child", "", "Internal: measure this dtype in this process.")
FLAGS = flags.FLAGS


def resolved_config():
    """FLAGS.config with --batch / --size applied (a conflicting --config.* override is an error)."""
    config = FLAGS.config
    overrides = config_flags.get_override_values(FLAGS["config"])
    for flag, key in (("batch", "batch_size"), ("size", "data.crop_size")):
        value = FLAGS[flag].value
        if value is None:
            continue
        if key in overrides and overrides[key] != value:
            raise app.UsageError(f"--{flag}={value} contradicts --config.{key}={overrides[key]}")
        if key == "batch_size":
            config.batch_size = value
        else:
            config.data.crop_size = value
    return config


def measure(config, dtype: str) -> dict:
    config.dtype = dtype
    batch_size, size = int(config.batch_size), int(config.data.crop_size)
    bench = JirlBench(config, random_batch(batch_size, size, real=is_harmonizer(config)))
    compile_train = bench.compile_train()
    bench.train(1)  # warm-up
    step_s, logs = bench.train(FLAGS.steps)
    step_s /= FLAGS.steps
    compile_infer = bench.compile_infer()
    infer_s = bench.infer(FLAGS.infer_steps) / FLAGS.infer_steps
    return {"dtype": dtype, "parameters": bench.num_params,
            "train_images_per_sec": batch_size / step_s, "step_seconds": step_s,
            "inference_images_per_sec": batch_size / infer_s,
            "compile_seconds_train": compile_train, "compile_seconds_inference": compile_infer,
            "peak_rss_gb": peak_rss_gb(), "final_loss": logs["loss"],
            "final_losses": {k: v for k, v in logs.items() if "loss" in k}}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = resolved_config()
    if FLAGS.child:
        print(json.dumps(measure(config, FLAGS.child)))
        return 0
    import jax

    overrides = config_overrides(FLAGS["config"])
    dtypes = FLAGS.dtypes or ([config.dtype] if "dtype" in overrides else ["float32", "bfloat16"])
    result = {"benchmark": "train_step", "config": config_flags.get_config_filename(FLAGS["config"]),
              "model": config.model.name, "overrides": overrides, "batch": int(config.batch_size),
              "size": int(config.data.crop_size), "backend": jax.default_backend(),
              "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count()}
    for dtype in dtypes:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), f"--child={dtype}", *config_argv(FLAGS["config"]),
             f"--batch={result['batch']}", f"--size={result['size']}", f"--steps={FLAGS.steps}",
             f"--infer_steps={FLAGS.infer_steps}"],
            capture_output=True, text=True)
        if proc.returncode != 0:
            result[dtype] = {"error": proc.stderr.strip().splitlines()[-5:], "rc": proc.returncode}
        else:
            result[dtype] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    app.run(main)

"""How close each system runs to this machine's limit; one JSON line per row, then a Markdown table.

  python benchmarks/roofline.py                                   # every system, float32 and,
                                                                  # with bf16 units, bfloat16
  python benchmarks/roofline.py --systems dirl,rainnet --dtypes float32
  python benchmarks/roofline.py --systems dirl --batch 2 --size 64 --steps 1   # a quick look
  python benchmarks/roofline.py --systems rainnet --rows_from earlier.jsonl --update_docs docs/performance.md

Rows: for each system (`--systems`, default dirl, unet, rsrnet, madisnet, rainnet) and compute
dtype, its jitted train step (RainNet: the D and the G phase) at `--batch` and its inference
forward at `--batch` and at batch 1, at the size of its config (`--size` overrides). For each:
the floating-point operations XLA counts for the compiled program (`compiled.cost_analysis()`,
a multiply-add = 2), the measured seconds per call, the achieved GFLOP/s and the share of the
machine's peak for that dtype.

The peak is measured in the same run (`peak` rows): a `--matmul` x `--matmul` matrix product in
XLA and in torch (if installed), float32, and in bfloat16 (bf16 x bf16 -> f32 accumulation) when
the CPU has bf16 dot-product units (jirl.cpu.has_bf16_units); the higher of the two frameworks
is the peak. Each system and dtype runs in its own subprocess (as benchmarks/train_step.py), so
one's memory does not stay in the next; JAX's compilation cache is off there so that compile
time is real.
"""

import json
import os
import subprocess
import sys

from absl import app, flags
from common import peak_rss_gb, random_batch, seconds_per_call, update_docs

SYSTEMS = ("dirl", "unet", "rsrnet", "madisnet", "rainnet")

flags.DEFINE_list("systems", list(SYSTEMS), "Systems to measure (configs/<name>.py).")
flags.DEFINE_list("dtypes", None, "Compute dtypes (default: float32, plus bfloat16 where the CPU "
                  "has bf16 units).")
flags.DEFINE_integer("batch", 8, "Batch of the train step and of the batched inference.")
flags.DEFINE_integer("size", None, "Square input size (default: each config's crop_size).")
flags.DEFINE_integer("steps", 2, "Timed train steps (after compile and one warm-up step).")
flags.DEFINE_integer("infer_steps", 3, "Timed inference batches (after compile and a warm-up).")
flags.DEFINE_integer("matmul", 2048, "Side of the square matrices that measure the peak.")
flags.DEFINE_string("update_docs", None, "Replace the `<!-- roofline -->` block of this Markdown "
                    "file (docs/performance.md) with the table.")
flags.DEFINE_multi_string("rows_from", [], "Also tabulate the JSON rows of earlier runs (files of "
                          "this script's output), e.g. to table systems measured in separate runs.")
flags.DEFINE_string("child", "", "Internal: measure SYSTEM:DTYPE in this process.")
FLAGS = flags.FLAGS


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost.get("flops", 0.0))


def peak_rows(dtypes: list[str], n: int) -> list[dict]:
    """The matmul peak per dtype, in XLA and in torch."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rows = []
    for dtype in dtypes:
        a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
        dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
        compiled = dot.lower(a, a).compile()
        seconds = seconds_per_call(lambda c=compiled, a=a: c(a, a).block_until_ready(), 5)
        rows.append({"row": "peak", "framework": "xla", "dtype": dtype, "n": n,
                     "gflops_per_s": 2 * n**3 / seconds / 1e9})
        try:
            import torch
        except ImportError:
            continue
        t = torch.randn(n, n, dtype=getattr(torch, dtype))
        with torch.no_grad():
            seconds = seconds_per_call(lambda t=t: torch.mm(t, t), 5)
        rows.append({"row": "peak", "framework": "torch", "dtype": dtype, "n": n,
                     "gflops_per_s": 2 * n**3 / seconds / 1e9})
    return rows


def measure(system: str, dtype: str) -> list[dict]:
    """The train and inference rows of one system in one dtype (run in a child process)."""
    import importlib

    from common import JirlBench

    config = importlib.import_module(f"jirl.configs.{system}").get_config()
    config.dtype = dtype
    config.batch_size = FLAGS.batch
    if FLAGS.size:
        config.data.crop_size = FLAGS.size
    size, harmonizer = int(config.data.crop_size), system == "rainnet"
    batched = JirlBench(config, random_batch(FLAGS.batch, size, real=harmonizer))
    single = JirlBench(config, random_batch(1, size, real=harmonizer))
    rows = []
    for work, bench in (("train", batched), ("inference", batched), ("inference", single)):
        if work == "train":
            compile_s = bench.compile_train()
            flops = _flops(bench._step)
            bench.train(1)
            seconds = bench.train(FLAGS.steps)[0] / FLAGS.steps
        else:
            compile_s = bench.compile_infer()
            flops = _flops(bench._infer)
            bench.infer(1)
            seconds = bench.infer(FLAGS.infer_steps) / FLAGS.infer_steps
        rows.append({"row": "system", "system": system, "work": work, "dtype": dtype,
                     "batch": bench.batch_size, "size": size, "gflop": flops / 1e9,
                     "seconds": seconds, "gflops_per_s": flops / seconds / 1e9,
                     "images_per_s": bench.batch_size / seconds, "compile_seconds": compile_s,
                     "peak_rss_gb": peak_rss_gb()})
    return rows


def table(rows: list[dict], cpu: dict) -> str:
    """The Markdown table of the system rows, with each one's share of its dtype's peak."""
    peak = {}
    for r in rows:
        if r["row"] == "peak":
            peak[r["dtype"]] = max(peak.get(r["dtype"], 0.0), r["gflops_per_s"])
    lines = [f"CPU: {cpu['model_name']}, {cpu['usable_cpus']} cores; peak (matmul, the best of XLA "
             "and torch in these runs): " + ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in peak.items()),
             "",
             "| system | work | dtype | batch | size | GFLOP / call | img/s | GFLOP/s | share of peak |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["row"] != "system":
            continue
        share = r["gflops_per_s"] / peak[r["dtype"]] if peak.get(r["dtype"]) else float("nan")
        lines.append(f"| {r['system']} | {r['work']} | {r['dtype']} | {r['batch']} | {r['size']} | "
                     f"{r['gflop']:.1f} | {r['images_per_s']:.3g} | {r['gflops_per_s']:.1f} | "
                     f"{share:.1%} |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if FLAGS.child:
        system, dtype = FLAGS.child.split(":")
        for row in measure(system, dtype):
            print(json.dumps(row), flush=True)
        return 0
    from jirl.cpu import cpu_info, has_bf16_units

    unknown = sorted(set(FLAGS.systems) - set(SYSTEMS))
    if unknown:
        raise app.UsageError(f"--systems: unknown {unknown}; the systems are {list(SYSTEMS)}")
    dtypes = FLAGS.dtypes or (["float32", "bfloat16"] if has_bf16_units() else ["float32"])
    cpu = cpu_info()
    print(json.dumps({"row": "machine", "cpu": cpu, "python": sys.version.split()[0]}), flush=True)
    rows = peak_rows(dtypes, FLAGS.matmul)
    for row in rows:
        print(json.dumps(row), flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    for system in FLAGS.systems:
        for dtype in dtypes:
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), f"--child={system}:{dtype}",
                 f"--batch={FLAGS.batch}", f"--steps={FLAGS.steps}",
                 f"--infer_steps={FLAGS.infer_steps}", *([f"--size={FLAGS.size}"] if FLAGS.size else [])],
                capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                row = {"row": "error", "system": system, "dtype": dtype, "rc": proc.returncode,
                       "stderr": proc.stderr.strip().splitlines()[-5:]}
                print(json.dumps(row), flush=True)
                continue
            for line in proc.stdout.strip().splitlines():
                if line.startswith("{"):
                    rows.append(json.loads(line))
                    print(line, flush=True)
    for path in FLAGS.rows_from:
        with open(path) as f:
            rows += [r for r in map(json.loads, (x for x in f if x.startswith("{")))
                     if r["row"] in ("peak", "system")]
    text = table(rows, cpu)
    print(text)
    if FLAGS.update_docs:
        update_docs(FLAGS.update_docs, "<!-- roofline -->", text)
    return 0


if __name__ == "__main__":
    app.run(main)

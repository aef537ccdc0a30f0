"""What verifying checkpoints costs: the SHA-256 of the model arrays that every save records and
every restore checks (`jirl.runtime.checkpoints.model_checksum`), and the finiteness check, at a
system's full size; prints one JSON line per system.

  python benchmarks/checkpoint_checksum.py                  # DIRL at its official size
  python benchmarks/checkpoint_checksum.py --config madisnet --repeats 5

Beside it, the time of a whole `write_model_checkpoint` and `restore_model` of the same arrays
(which include both), so that the share is visible.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(config_name: str, repeats: int) -> dict:
    import jax
    import numpy as np

    from jirl.models import build_model, init_model_variables
    from jirl.runtime import checkpoints as ckpt
    from jirl.runtime import configs

    config = configs.load(config_name)
    _, model = build_model(config)
    variables = jax.device_get(init_model_variables(config, model))
    on_device = jax.device_put(variables)
    leaves = jax.tree.leaves(variables)
    nbytes = sum(np.asarray(x).nbytes for x in leaves)
    target = jax.eval_shape(lambda: variables)
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(10**6))
        write = lambda: ckpt.write_model_checkpoint(os.path.join(tmp, str(next(counter))),
                                                    variables, {})
        step_dir = write()
        return {
            "system": config.model.name, "config": config_name,
            "arrays": len(leaves), "parameters": int(sum(np.size(x) for x in leaves)),
            "megabytes": round(nbytes / 2**20, 1),
            "checksum_s": round(_best(lambda: ckpt.model_checksum(on_device), repeats), 4),
            "finite_check_s": round(_best(lambda: ckpt.non_finite_entries(on_device), repeats), 4),
            "write_checkpoint_s": round(_best(write, repeats), 3),
            "restore_checkpoint_s": round(_best(lambda: ckpt.restore_model(step_dir, target),
                                                repeats), 3),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "jax": jax.__version__, "backend": jax.default_backend(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="config name[:variant] (repeatable; "
                        "default: dirl)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()
    for name in args.config or ["dirl"]:
        print(json.dumps(measure(name, args.repeats)), flush=True)


if __name__ == "__main__":
    main()

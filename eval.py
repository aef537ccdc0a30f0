"""Evaluate a jirl checkpoint: AP / F1 / IoU (official protocol) on a split, overall and per subset.

  python eval.py --config configs/dirl.py:quick                 # best (else latest) in the workdir
  python eval.py --config configs/dirl.py --checkpoint DIR      # any checkpoint or step directory
Writes <workdir>/eval.json; --save_masks also writes the predicted masks as PNGs.
"""

import json
import os
import sys

import jax
from absl import app, flags

from jirl.models import build_model, init_model_variables
from jirl.training import checkpoints as ckpt
from jirl.training import cli, distributed
from jirl.training import mesh as jmesh
from jirl.training.evaluate import evaluate, format_table
from jirl.training.steps import make_eval_step

cli.define_flags()
distributed.define_flags()
flags.DEFINE_string("checkpoint", None, "Checkpoint to evaluate (default: the workdir's best, "
                    "else its latest).")
flags.DEFINE_string("split", None, "Split to evaluate (default: config.eval.split).")
flags.DEFINE_bool("save_masks", False, "Also write predicted masks to <workdir>/masks/.")
FLAGS = flags.FLAGS


def write_json_atomic(path: str, payload: dict) -> None:
    """Writes JSON to a temporary file, then renames it: never a half-written file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.initialize_from_flags()  # before anything touches devices
    cli.quiet_libraries()
    config = FLAGS.config
    workdir = cli.workdir()
    spec, model = build_model(config)
    mesh = jmesh.make_mesh()
    target = jax.eval_shape(lambda: init_model_variables(config, model))
    try:
        step_dir = ckpt.resolve_checkpoint(FLAGS.checkpoint or workdir)
        variables = ckpt.restore_model(step_dir, target, mesh=mesh, model_cfg=config.model)
    except ckpt.CheckpointError as e:
        sys.exit(f"eval.py: {e}")
    eval_step = jax.jit(make_eval_step(spec, config, model.apply))
    split = FLAGS.split or config.eval.split
    mask_dir = os.path.join(workdir, "masks") if FLAGS.save_masks else None
    results = evaluate(config, eval_step, variables, mesh, split=split, mask_dir=mask_dir)
    print(f"checkpoint: {step_dir}\nsplit: {split}")
    print(format_table(results))
    if jax.process_index() == 0:
        write_json_atomic(os.path.join(workdir, "eval.json"), {
            "checkpoint": step_dir, "split": split, "model": config.model.name,
            "normalized": bool(config.eval.normalize), "results": results})


if __name__ == "__main__":
    app.run(main)

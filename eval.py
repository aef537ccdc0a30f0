"""Evaluate a jirl checkpoint on a split, overall and per subset: a localizer's AP / F1 / IoU
(official DIRL protocol), a harmonizer's MSE / PSNR / fMSE (RainNet's, also per foreground-ratio
bin).

  python eval.py --config configs/dirl.py:quick                 # best (else latest) in the workdir
  python eval.py --config configs/dirl.py --checkpoint DIR      # any checkpoint or step directory
Writes <workdir>/eval.json; --save_masks also writes the predicted masks as PNGs (a
harmonizer: --save_images, the harmonized images). Beside the model it scores the trivial
baselines unless --config.eval.baselines=False: the mean training mask and the all-foreground
mask (see jirl.training.baselines), for a harmonizer the unharmonized composite. --contact_sheet N draws N
examples whose regions lie away from the image centre (composite | ground truth | prediction).
"""

import json
import os
import sys

import jax
from absl import app, flags

from jirl import visualize
from jirl.models import build_model, init_model_variables
from jirl.training import baselines as jbase
from jirl.training import checkpoints as ckpt
from jirl.training import cli, distributed
from jirl.training import mesh as jmesh
from jirl.training.evaluate import evaluate, format_table, off_centre_sheet
from jirl.training.steps import make_eval_step

cli.define_flags()
distributed.define_flags()
flags.DEFINE_string("checkpoint", None, "Checkpoint to evaluate (default: the workdir's best, "
                    "else its latest).")
flags.DEFINE_string("split", None, "Split to evaluate (default: config.eval.split).")
flags.DEFINE_bool("save_masks", False, "Also write predicted masks to <workdir>/masks/.")
flags.DEFINE_bool("save_images", False, "A harmonizer: also write the harmonized images to "
                  "<workdir>/images/<name>/<example>.png.")
flags.DEFINE_integer("contact_sheet", 0, "Also write <workdir>/contact_sheet.png: the first N "
                     "examples of the split whose region's centre lies >= 0.25 image sides from "
                     "the image centre (composite | ground truth | prediction); one process.")
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
    if spec.task != "localization" and (FLAGS.contact_sheet > 0 or FLAGS.save_masks):
        sys.exit(f"eval.py: {config.model.name} is a {spec.task} model: it predicts no masks "
                 "(--save_masks, --contact_sheet); use --save_images")
    if spec.task == "localization" and FLAGS.save_images:
        sys.exit(f"eval.py: --save_images is for harmonizers; {config.model.name} predicts masks "
                 "(--save_masks)")
    if FLAGS.contact_sheet > 0 and jax.process_count() > 1:
        sys.exit("eval.py: --contact_sheet is drawn by a single process; run it without "
                 "--contact_sheet on several hosts, or on one host")
    mesh = jmesh.make_mesh()
    target = jax.eval_shape(lambda: init_model_variables(config, model))
    try:
        step_dir = ckpt.resolve_checkpoint(FLAGS.checkpoint or workdir)
        variables = ckpt.restore_model(step_dir, target, mesh=mesh, model_cfg=config.model)
    except ckpt.CheckpointError as e:
        sys.exit(f"eval.py: {e}")
    eval_step = jax.jit(make_eval_step(spec, config, model.apply))
    split = FLAGS.split or config.eval.split
    mask_dir = (os.path.join(workdir, "masks") if FLAGS.save_masks
                else os.path.join(workdir, "images") if FLAGS.save_images else None)
    base = (jbase.mean_training_mask(config.data, config.eval.prior_examples)
            if config.eval.baselines and spec.task == "localization" else None)
    results = evaluate(config, eval_step, variables, mesh, split=split, mask_dir=mask_dir,
                       baselines=base)
    print(f"checkpoint: {step_dir}\nsplit: {split}")
    print(format_table(results))
    payload = {"checkpoint": step_dir, "split": split, "model": config.model.name,
               "task": spec.task, "primary_mask": spec.primary_mask, "results": results}
    if spec.task == "localization":
        payload["normalized"] = bool(config.eval.normalize)
    else:
        payload["quantized"] = bool(config.eval.quantize)
    if base is not None:
        payload["mean_mask"] = base.summary()
        print("mean training mask: " + ", ".join(f"{k} {v:.4g}" for k, v in base.summary().items()))
    if FLAGS.contact_sheet > 0:
        sheet = off_centre_sheet(config, eval_step, variables, mesh, split=split,
                                 mask_name=spec.primary_mask, count=FLAGS.contact_sheet)
        visualize.save_png(os.path.join(workdir, "contact_sheet.png"), sheet)
        print(f"contact sheet: {os.path.join(workdir, 'contact_sheet.png')}")
    if jax.process_index() == 0:
        write_json_atomic(os.path.join(workdir, "eval.json"), payload)


if __name__ == "__main__":
    app.run(main)

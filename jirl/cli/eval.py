"""jirl eval: score a checkpoint on a split, overall and per subset: a localizer's AP / F1 / IoU
(official DIRL protocol), a harmonizer's MSE / PSNR / fMSE (RainNet's, also per foreground-ratio
bin), beside the trivial baselines unless --config.eval.baselines=False.

  jirl eval --checkpoint runs/dirl_quick             # the config stored in the checkpoint
  jirl eval --config dirl:quick                      # the workdir's best (else latest) checkpoint
  jirl eval --config dirl --checkpoint DIR --output out/   # another config: e.g. other data

Writes eval.json to --output, else --workdir, else the checkpoint's own workdir (with --config
and no checkpoint: runs/<config>). --save_outputs also writes the model's outputs per example
(a localizer's masks under masks/<name>/, a harmonizer's images under images/<name>/);
--contact_sheet N draws N examples whose regions lie away from the image centre.
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags, logging

from jirl import files
from jirl.models import DTYPES as COMPUTE_DTYPES
from jirl.runtime import checkpoints as ckpt
from jirl.runtime import distributed
from jirl.runtime import flags as jflags
from jirl.training.evaluate import evaluate_checkpoint, format_table
from jirl.training.recipe import data_warnings

FLAGS = flags.FLAGS
RESULTS = "eval.json"
SHORTHANDS = {"dtype": "dtype", "batch_size": "eval.batch_size", "normalize": "eval.normalize"}


def define_flags() -> None:
    jflags.define_config_flag(required=False, help_text=(
        "Config (a name such as dirl:quick, or a file) to evaluate with; default: the config "
        "stored in --checkpoint. --config.key=value overrides need --config."))
    flags.DEFINE_string("workdir", None, "Run directory whose best (else latest) checkpoint is "
                        "scored when --checkpoint is not given; eval.json goes there too. "
                        "Default: runs/<config>[_<variant>].")
    flags.DEFINE_string("checkpoint", None, "Checkpoint to score: a workdir (its best, else its "
                        "latest), a checkpoint directory or a step directory.")
    flags.DEFINE_string("output", None, "Where eval.json (and --save_outputs, --contact_sheet) "
                        "go; default: --workdir, else the checkpoint's workdir.")
    flags.DEFINE_string("split", None, "Split to score (default: config.eval.split).")
    flags.DEFINE_bool("save_outputs", False, "Also write the model's outputs per example: a "
                      "localizer's masks (masks/<name>/), a harmonizer's images (images/<name>/).")
    jflags.define_dtype_flag(COMPUTE_DTYPES, None, "Compute dtype (= config.dtype; default: the "
                             "config's).")
    jflags.define_batch_size_flag("Examples per eval step, over all devices (= config.eval."
                                  "batch_size; default: the config's).")
    jflags.define_normalize_flag(default=None)
    flags.DEFINE_integer("contact_sheet", 0, "Also write contact_sheet.png: the first N examples "
                         "of the split whose region's centre lies >= 0.25 image sides from the "
                         "image centre (composite | ground truth | prediction); one process.")
    distributed.define_flags()


def _config_checkpoint_output() -> tuple:
    """(config, checkpoint, output directory) from the flags (see the module doc)."""
    if FLAGS.config is None and not FLAGS.checkpoint:
        raise app.UsageError("pass --checkpoint (its stored config is used) or --config")
    if FLAGS.config is not None:
        checkpoint = FLAGS.checkpoint or FLAGS.workdir or jflags.default_workdir()
        config = FLAGS.config
    else:
        checkpoint = FLAGS.checkpoint
        config = ckpt.stored_config(checkpoint)
    jflags.apply_to_config(config, SHORTHANDS)
    output = FLAGS.output or FLAGS.workdir
    if output is None:
        output = (ckpt.checkpoint_workdir(ckpt.resolve_checkpoint(checkpoint)) if FLAGS.checkpoint
                  else checkpoint)
    return config, checkpoint, output


def main(argv: list[str]) -> None:
    jflags.begin(argv, join_processes=True)
    try:
        config, checkpoint, output = _config_checkpoint_output()
        for problem in data_warnings(config):
            logging.warning("eval: %s", problem)
        payload = evaluate_checkpoint(config, checkpoint, split=FLAGS.split, output_dir=output,
                                      save_outputs=FLAGS.save_outputs,
                                      contact_sheet=FLAGS.contact_sheet)
    except (ckpt.CheckpointError, ValueError) as e:
        sys.exit(f"eval: {e}")
    print(f"checkpoint: {payload['checkpoint']}\nsplit: {payload['split']}")
    print(format_table(payload["results"]))
    if "mean_mask" in payload:
        print("mean training mask: " + ", ".join(
            f"{k} {v:.4g}" for k, v in payload["mean_mask"].items()))
    if "contact_sheet" in payload:
        print(f"contact sheet: {payload['contact_sheet']}")
    if jax.process_index() == 0:
        results = files.path(output) / RESULTS
        files.write_json(results, payload)
        print(f"results: {results}")


def run(argv: list[str] | None = None) -> None:
    """Runs the command (argv: sys.argv by default)."""
    jflags.run_command(main, define_flags, __doc__, argv)

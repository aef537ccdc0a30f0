"""jirl ablation (python -m jirl.ablation): train and score several variants of one config in
this process, then tabulate them; see `jirl.ablation`.

  jirl ablation --config rsrnet:quick --workdir runs/rsrnet_table2
  jirl ablation --config rainnet:quick --seeds 5          # seeds 0..4, RAIN paired with IN
  jirl ablation --config rsrnet:quick --variants row2,row9 --seeds 0,1,2 --reference row9
  jirl ablation --arm dirl:quick --arm unet:quick --seeds 3 --workdir runs/quick_table

--config.key=value overrides apply to every variant; --arm compares whole configs instead (each
named by its config, or NAME=CONFIG), with the --dtype / --batch_size shorthands for all of them.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import flags
from ml_collections import config_flags

from jirl import ablation
from jirl.models import DTYPES
from jirl.runtime import configs, distributed
from jirl.runtime import flags as jflags
from jirl.runtime.checkpoints import CheckpointError
from jirl.training.loop import Preempted

FLAGS = flags.FLAGS


def define_flags() -> None:
    jflags.define_config_flag(lock_config=False, help_text=(
        "The config whose variants are compared, with the base variant: rsrnet:quick, "
        "rainnet:quick, or a file (FILE[:variant]); --config.key=value overrides every variant."),
        required=False)
    flags.DEFINE_multi_string("arm", [], "A whole config to compare (instead of --config's "
                              "variants), once per arm: CONFIG (named by it: dirl:quick -> "
                              "dirl_quick) or NAME=CONFIG; the first is the default reference.")
    flags.DEFINE_list("variants", [], "The variants to compare (default: the config's ROWS).")
    flags.DEFINE_list("seeds", [], "Train every variant once per seed: a count N (seeds 0..N-1) "
                      "or a list of seeds (default: once, with config.seed).")
    flags.DEFINE_bool("report_only", False, "Tabulate the runs already scored in --workdir and "
                      "train nothing (e.g. while the ablation still runs elsewhere).")
    flags.DEFINE_string("reference", None, "The variant the others are compared with, seed by "
                        "seed (default: the config's REFERENCE, else the first variant).")
    jflags.define_dtype_flag(DTYPES, None, "Compute dtype of every variant (= config.dtype).")
    jflags.define_batch_size_flag("Global batch of every variant (= config.batch_size).")
    flags.DEFINE_string("workdir", None, "Where each variant trains (<workdir>/<variant>) and the "
                        "tables go. Default: runs/<config>_ablation (with --arm: runs/ablation).")
    distributed.define_flags()


def overrides() -> dict:
    """The --config.key=value overrides and the --dtype / --batch_size shorthands, for every arm."""
    given = FLAGS.config is not None  # --arm runs have no --config to override
    return {**(config_flags.get_override_values(FLAGS["config"]) if given else {}),
            **jflags.shorthand_values({"dtype": "dtype", "batch_size": "batch_size"})}


def compared(arms: list[str], config: str | None, variants: list[str],
             workdir: str | None) -> tuple[str | dict[str, str], str]:
    """What the flags compare (`config`'s file and variants, or the `arms` configs) and the
    workdir. Raises ValueError for both, or neither."""
    if arms:
        if config is not None or variants:
            raise ValueError("give --config (and --variants) or --arm, not both")
        return ablation.named_arms(arms), workdir or os.path.join("runs", "ablation")
    if config is None:
        raise ValueError("give --config (a config with ROWS, e.g. rsrnet:quick) or --arm CONFIG "
                         "for each config to compare")
    stem = os.path.splitext(os.path.basename(configs.split(config)[0]))[0]
    return config, workdir or os.path.join("runs", f"{stem}_ablation")


def main(argv: list[str]) -> None:
    jflags.begin(argv, join_processes=True)
    try:
        argument = (None if FLAGS.config is None
                    else config_flags.get_config_filename(FLAGS["config"]))
        what, workdir = compared(FLAGS.arm, argument, FLAGS.variants, FLAGS.workdir)
        results = ablation.run_ablation(
            what, FLAGS.variants, workdir=workdir, overrides=overrides(),
            seeds=ablation.parse_seeds(FLAGS.seeds), reference=FLAGS.reference,
            train=not FLAGS.report_only)
    except Preempted as e:  # the checkpoint is saved; the rerun resumes this run
        print(f"ablation: {e}")
        return
    except (CheckpointError, ValueError) as e:
        sys.exit(f"ablation: {e}")
    if jax.process_index() != 0:
        return
    with open(os.path.join(workdir, "table.md"), encoding="utf-8") as f:
        print(f.read())
    for name in ("chart.png", "curves.png", "iterations.png"):
        if os.path.exists(os.path.join(workdir, name)):
            print(f"{name}: {os.path.abspath(os.path.join(workdir, name))}")
    if not os.path.exists(os.path.join(workdir, "chart.png")):
        print("charts: not drawn (pip install 'jirl[plots]' for matplotlib)")
    runs = sum(len(by_seed) for by_seed in results.values())
    print(f"tables: {os.path.abspath(workdir)} ({len(results)} variants, {runs} runs)")


def run(argv: list[str] | None = None) -> None:
    """Runs the command (argv: sys.argv by default)."""
    jflags.run_command(main, define_flags, __doc__, argv)


if __name__ == "__main__":
    run()

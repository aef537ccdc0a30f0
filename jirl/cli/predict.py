"""jirl predict: find (and fix) the inharmonious region of your own photos, at their own size.

  jirl predict --checkpoint runs/dirl_quick --input photos/ --output out/
  jirl predict --checkpoint CKPT --input 'shots/**/*.jpg' --resize native
  jirl predict --checkpoint CKPT --input photo.jpg --harmonizer runs/rainnet_quick
  jirl predict --harmonizer CKPT --input photo.jpg --mask my_mask.png

--input: an image, a folder (recursive) or a quoted glob. Per photo, under --output:
<name>_mask.png (8-bit probability), <name>_mask_bin.png (after the official per-image
normalization, threshold 0.5; --no_normalize: raw probabilities), <name>_overlay.jpg, with
--harmonizer <name>_harmonized.jpg, and a line of predictions.jsonl. The model and its config come
from the checkpoint (a jirl workdir, checkpoint directory, or `python -m jirl.convert` output).
--resize train (default: the model's training size, as the official evaluation and libcom),
native (the photo's own size, padded to a bucket) or --long_side N. See jirl/inference.py.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags

from jirl.data.images import BadImageError
from jirl.inference import DTYPES, POLICIES, Harmonizer, Localizer
from jirl.predict import Predictor, default_compile_cache, enable_compile_cache, find_photos
from jirl.runtime import flags as jflags
from jirl.runtime.checkpoints import CheckpointError

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("checkpoint", None, "Localizer checkpoint (workdir, checkpoint or step "
                        "directory; a workdir's best checkpoint is preferred).")
    flags.DEFINE_string("input", None, "An image, a folder (searched recursively) or a glob.")
    flags.DEFINE_string("output", "predictions", "Output directory (created).")
    flags.DEFINE_enum("resize", "train", [p for p in POLICIES if p != "long_side"],
                      "Resolution policy: train | native (or --long_side N).")
    flags.DEFINE_integer("long_side", None, "Run at this longer side (keeping the aspect ratio), "
                         "then resize the mask back to the photo.")
    flags.DEFINE_bool("no_normalize", False, "Threshold the raw probabilities for the binary mask "
                      "(default: after the official per-image min-max normalization).")
    flags.DEFINE_string("harmonizer", None, "Harmonizer checkpoint (RainNet): also write "
                        "<name>_harmonized.jpg of the detected (or --mask) region.")
    flags.DEFINE_string("mask", None, "Your own mask instead of a localizer: a file, or a folder "
                        "with a mask per photo (same relative name); needs --harmonizer.")
    flags.DEFINE_bool("overwrite", False, "Replace existing outputs (default: leave those photos).")
    flags.DEFINE_integer("batch_size", None, "Photos per model call (default: the number of local "
                         "devices, so that every device works).")
    flags.DEFINE_enum("image_format", "jpg", ["jpg", "png"], "Format of the overlay and the "
                      "harmonized image (png: lossless, the background byte-identical).")
    flags.DEFINE_enum("dtype", "auto", list(DTYPES), "The localizer's compute "
                      "dtype; auto: bfloat16 on a CPU with bf16 units (AVX512-BF16 / AMX), else the "
                      "checkpoint's. The harmonizer runs at the checkpoint's unless a dtype is named.")
    flags.DEFINE_string("compile_cache", default_compile_cache(), "Directory that keeps the compiled "
                        "programs for the next run (jax's persistent cache); '' turns it off.")
    jflags.define_config_flag(required=False, lock_config=False, help_text=(
        "Only for a checkpoint without a config in its meta: the config it was trained with."))


def main(argv) -> int:
    jflags.begin(argv)
    if not FLAGS.input:
        raise app.UsageError("--input is required")
    resize = "long_side" if FLAGS.long_side is not None else FLAGS.resize
    if FLAGS.long_side is not None and FLAGS["resize"].present:
        raise app.UsageError("--long_side and --resize exclude each other")
    try:
        if FLAGS.compile_cache:
            enable_compile_cache(FLAGS.compile_cache)
        photos = find_photos(FLAGS.input, exclude=FLAGS.output)
        localizer = (Localizer.from_checkpoint(FLAGS.checkpoint, resize=resize,
                                               long_side=FLAGS.long_side, config=FLAGS.config,
                                               dtype=FLAGS.dtype)
                     if FLAGS.checkpoint else None)
        harmonizer_dtype = None if FLAGS.dtype == "auto" else FLAGS.dtype
        harmonizer = (Harmonizer.from_checkpoint(FLAGS.harmonizer, dtype=harmonizer_dtype)
                      if FLAGS.harmonizer else None)
        predictor = Predictor(FLAGS.output, localizer=localizer, harmonizer=harmonizer,
                              mask_spec=FLAGS.mask, normalize=not FLAGS.no_normalize,
                              overwrite=FLAGS.overwrite, image_format=FLAGS.image_format,
                              batch_size=FLAGS.batch_size or jax.local_device_count())
    except (OSError, CheckpointError, ValueError, BadImageError) as e:
        print(f"predict: {e}", file=sys.stderr)
        return 2
    summary = predictor.run(photos)
    print(summary.line())
    print(f"outputs: {os.path.abspath(FLAGS.output)}")
    return 0



def run(argv: list[str] | None = None) -> None:
    """Runs the command (argv: sys.argv by default)."""
    jflags.run_command(main, define_flags, __doc__, argv)

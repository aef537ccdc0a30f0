"""jirl predict: find (and fix) the inharmonious region of your own photos, at their own size.

  jirl predict --checkpoint runs/dirl_quick --input photos/ --output out/
  jirl predict --checkpoint CKPT --input 'shots/**/*.jpg' --resize native
  jirl predict --checkpoint CKPT --input photo.jpg --harmonizer runs/rainnet_quick
  jirl predict --harmonizer CKPT --input photo.jpg --mask my_mask.png

--input: an image, a folder (recursive) or a quoted glob. Per photo, under --output:
<name>_mask.png (8-bit probability), <name>_mask_bin.png (after the official per-image
normalization, threshold 0.5; --nonormalize: raw probabilities), <name>_overlay.jpg, with
--harmonizer <name>_harmonized.jpg, and a line of predictions.jsonl (<name> keeps the extension,
dup.jpg_mask.png, where two photos would share it). A photo is done when its outputs and its line
exist: a rerun (after Ctrl-C, a kill, a full disk) does the rest. The model and its config come
from the checkpoint (a jirl workdir, checkpoint directory, `jirl convert` output, or the released
.pth files themselves, converted once into a cache). --resize train (default: the model's
training size, as the official evaluation and libcom), native (the photo's own size, padded to a
bucket) or long_side (--long_side N). See jirl/inference.py.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags

from jirl.data.images import MAX_PIXELS, BadImageError
from jirl.inference import DTYPES, Harmonizer, Localizer
from jirl.predict import (
    Predictor,
    default_compile_cache,
    define_resize_flags,
    enable_compile_cache,
    find_photos,
    prepare_output,
    resize_policy,
)
from jirl.runtime import flags as jflags
from jirl.runtime.checkpoints import CheckpointError

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("checkpoint", None, "Localizer checkpoint: a jirl workdir (its best "
                        "checkpoint), checkpoint or step directory, or the released .pth files "
                        "(G.pth,IHDRNet.pth comma-separated, or their folder), converted once.")
    flags.DEFINE_string("input", None, "An image, a folder (searched recursively) or a glob.")
    flags.DEFINE_string("output", "predictions", "Output directory (created).")
    define_resize_flags()
    jflags.define_normalize_flag()
    jflags.define_deprecated("no_normalize", "normalize", negated=True)
    flags.DEFINE_string("harmonizer", None, "Harmonizer checkpoint (RainNet; or its net_G .pth): "
                        "also write <name>_harmonized.jpg of the detected (or --mask) region.")
    flags.DEFINE_string("mask", None, "Your own mask instead of a localizer: a file, or a folder "
                        "with a mask per photo (same relative name); needs --harmonizer.")
    flags.DEFINE_bool("overwrite", False, "Redo photos already done (default: leave those photos; "
                      "an unfinished one is always redone).")
    flags.DEFINE_integer("max_pixels", MAX_PIXELS, "Largest photo read, width x height in pixels, "
                         f"checked from the file's header before decoding (default {MAX_PIXELS:,}, "
                         "50 MP); a larger one is skipped with a line saying so.", lower_bound=1)
    jflags.define_batch_size_flag("Photos per model call (default: the number of local devices, "
                                  "so that every device works).")
    flags.DEFINE_enum("image_format", "jpg", ["jpg", "png"], "Format of the overlay and the "
                      "harmonized image (png: lossless, the background byte-identical).")
    jflags.define_dtype_flag(DTYPES, "auto", "The localizer's compute dtype; auto: bfloat16 on a "
                             "CPU with bf16 units (AVX512-BF16 / AMX), else the checkpoint's. The "
                             "harmonizer runs at the checkpoint's unless a dtype is named.")
    flags.DEFINE_string("compile_cache", default_compile_cache(), "Directory that keeps the compiled "
                        "programs for the next run (jax's persistent cache); '' turns it off.")
    jflags.define_config_flag(required=False, lock_config=False, help_text=(
        "The localizer's config, for a checkpoint without one in its meta, or to convert released "
        ".pth files with other settings than the official ones (a name or a file)."))


def main(argv) -> int:
    jflags.begin(argv)
    if not FLAGS.input:
        raise app.UsageError("--input is required")
    resize, long_side = resize_policy()
    try:
        if FLAGS.compile_cache:
            enable_compile_cache(FLAGS.compile_cache)
        photos = find_photos(FLAGS.input, exclude=FLAGS.output)
        prepare_output(FLAGS.output)  # before any model is loaded
        localizer = (Localizer.from_checkpoint(FLAGS.checkpoint, resize=resize, long_side=long_side,
                                               config=FLAGS.config, dtype=FLAGS.dtype)
                     if FLAGS.checkpoint else None)
        harmonizer_dtype = None if FLAGS.dtype == "auto" else FLAGS.dtype
        harmonizer = (Harmonizer.from_checkpoint(FLAGS.harmonizer, dtype=harmonizer_dtype)
                      if FLAGS.harmonizer else None)
        predictor = Predictor(FLAGS.output, localizer=localizer, harmonizer=harmonizer,
                              mask_spec=FLAGS.mask, normalize=FLAGS.normalize,
                              overwrite=FLAGS.overwrite, image_format=FLAGS.image_format,
                              batch_size=FLAGS.batch_size or jax.local_device_count(),
                              max_pixels=FLAGS.max_pixels)
    except (OSError, CheckpointError, ValueError, BadImageError) as e:
        print(f"predict: {e}", file=sys.stderr)
        return 2
    try:
        summary = predictor.run(photos)
    except (KeyboardInterrupt, OSError) as e:
        why = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e)
        print(f"predict: {why}; {predictor.summary.written} photos written, every one whole; the "
              "same command again does the rest", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 1
    print(summary.line())
    print(f"outputs: {os.path.abspath(FLAGS.output)}")
    return 0


def run(argv: list[str] | None = None) -> None:
    """Runs the command (argv: sys.argv by default)."""
    jflags.run_command(main, define_flags, __doc__, argv)

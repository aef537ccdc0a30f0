"""Find (and fix) the inharmonious region of your own photos, at their own resolution.

  python predict.py --checkpoint runs/dirl_quick --input photos/ --output out/
  python predict.py --checkpoint CKPT --input 'shots/**/*.jpg' --resize native
  python predict.py --checkpoint CKPT --input photo.jpg --harmonizer runs/rainnet_quick
  python predict.py --harmonizer CKPT --input photo.jpg --mask my_mask.png

--input: an image, a folder (recursive) or a quoted glob. Per photo, under --output:
<name>_mask.png (8-bit probability), <name>_mask_bin.png (after the official per-image
normalization, threshold 0.5; --no_normalize: raw probabilities), <name>_overlay.jpg, with
--harmonizer <name>_harmonized.jpg, and a line of predictions.jsonl. The model and its config come
from the checkpoint (a jirl workdir, checkpoint directory, or `python -m jirl.convert` output).
--resize train (default: the model's training size, as the official evaluation and libcom),
native (the photo's own size, padded to a bucket) or --long_side N. See jirl/inference.py.
"""

import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from jirl.data.images import BadImageError
from jirl.inference import POLICIES, Harmonizer, Localizer
from jirl.predict import Predictor, default_compile_cache, enable_compile_cache, find_photos
from jirl.training import cli
from jirl.training.checkpoints import CheckpointError

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
flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"], "The localizer's compute "
                  "dtype; auto: bfloat16 on a CPU with bf16 units (AVX512-BF16 / AMX), else the "
                  "checkpoint's. The harmonizer runs at the checkpoint's unless a dtype is named.")
flags.DEFINE_string("compile_cache", default_compile_cache(), "Directory that keeps the compiled "
                    "programs for the next run (jax's persistent cache); '' turns it off.")
config_flags.DEFINE_config_file("config", None, "Only for a checkpoint without a config in its "
                                "meta: the config it was trained with.", lock_config=False)
FLAGS = flags.FLAGS


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.input:
        raise app.UsageError("--input is required")
    cli.quiet_libraries()
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
        print(f"predict.py: {e}", file=sys.stderr)
        return 2
    summary = predictor.run(photos)
    print(summary.line())
    print(f"outputs: {os.path.abspath(FLAGS.output)}")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))

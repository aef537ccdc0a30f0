"""jirl convert: official PyTorch checkpoints -> jirl Orbax checkpoints (also python -m jirl.convert).

  jirl convert dirl --encoder E.pth --decoder D.pth --output DIR [--config NAME[:variant]]
  jirl convert unet --checkpoint G.pth --output DIR [--config NAME[:variant]]
  jirl convert madisnet --g G.pth --ihdrnet I.pth [--domain_encoder E.pth] --output DIR
      [--config madisnet[:unet]]         # official g/ihdrnet/domain_encoder_epoch*.pth, or
                                         # libcom's Inharmonious_G.pth + IHDRNet.pth
  jirl convert rainnet --checkpoint net_G_last.pth [--discriminator net_D_last.pth] --output DIR
      [--config rainnet[:in]]            # the released net_G_last.pth (256 px); the 512 px
                                         # release with --config.data.crop_size=512

`jirl predict`, `jirl demo` and `jirl.Localizer.from_checkpoint` take the released files directly
(they convert them once into a cache: see jirl.convert.official); this command writes the
checkpoint where you choose, e.g. to train from it (`--config.init_from=DIR`).

The model architecture comes from `--config` (default: the shipped config of the model, the
official setting), with `--config.key=value` overrides as in train and eval, e.g.
`--config dirl --config.model.ggd_ch=64`. Writes a checkpoint that `jirl eval --checkpoint DIR`,
`jirl predict` and `--config.init_from=DIR` accept; its meta records the model, the source files
and the whole config. Needs the optional extra `jirl[torch]`.
"""

from __future__ import annotations

import sys

from absl import app, flags

from jirl.convert.official import OPTIONAL, SOURCES, convert
from jirl.runtime import flags as jflags
from jirl.runtime.torch_io import ConversionError

FLAGS = flags.FLAGS


def _model_from_argv(argv: list[str]) -> str | None:
    """The model named on the command line (read before parsing, for --config's default)."""
    return next((arg for arg in argv[1:] if arg in SOURCES), None)


def define_flags(model: str | None) -> None:
    """--config (default: the shipped config named <model>), --out and every model's
    source-file flags."""
    jflags.define_config_flag(default=model if model in SOURCES else None, required=False,
                              help_text="Config giving the architecture (default: the model's "
                              "own, e.g. dirl; a name or a file, with --config.key=value).")
    flags.DEFINE_string("output", None, "Output checkpoint directory (new or empty).")
    jflags.define_deprecated("out", "output")
    for sources in SOURCES.values():
        for name, help_text in sources.items():
            if name not in FLAGS:
                flags.DEFINE_string(name, None, help_text)


def main(argv: list[str]) -> int:
    jflags.quiet_libraries()
    args = argv[1:]
    if len(args) != 1 or args[0] not in SOURCES:
        raise app.UsageError(f"name one model to convert: {' | '.join(SOURCES)} (got {args})")
    model = args[0]
    files = {name: FLAGS[name].value for name in SOURCES[model]
             if FLAGS[name].value or name not in OPTIONAL}
    missing = [f"--{k}" for k, v in [*files.items(), ("output", FLAGS.output)] if not v]
    if missing:
        raise app.UsageError(f"{model} needs {', '.join(missing)}")
    try:
        path = convert(model, files, FLAGS.output, FLAGS.config)
    except ConversionError as e:
        print(f"convert: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


def run(argv: list[str] | None = None) -> None:
    """Runs the command (argv: sys.argv by default)."""
    argv = sys.argv if argv is None else argv
    jflags.run_command(main, lambda: define_flags(_model_from_argv(argv)), __doc__, argv)


if __name__ == "__main__":
    run()

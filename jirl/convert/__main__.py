"""jirl convert: official PyTorch checkpoints -> jirl Orbax checkpoints (also python -m jirl.convert).

  jirl convert dirl --encoder E.pth --decoder D.pth --out DIR [--config NAME[:variant]]
  jirl convert unet --checkpoint G.pth --out DIR [--config NAME[:variant]]
  jirl convert madisnet --g G.pth --ihdrnet I.pth [--domain_encoder E.pth] --out DIR
      [--config madisnet[:unet]]         # official g/ihdrnet/domain_encoder_epoch*.pth, or
                                         # libcom's Inharmonious_G.pth + IHDRNet.pth
  jirl convert rainnet --checkpoint net_G_last.pth [--discriminator net_D_last.pth] --out DIR
      [--config rainnet[:in]]            # the released net_G_last.pth (256 px); the 512 px
                                         # release with --config.data.crop_size=512

The model architecture comes from `--config` (default: the shipped config of the model, the
official setting), with `--config.key=value` overrides as in train and eval, e.g.
`--config dirl --config.model.ggd_ch=64`. Writes a checkpoint that `jirl eval --checkpoint DIR`,
`jirl predict` and `--config.init_from=DIR` accept; its meta records the model, the source files
and the whole config. Needs the optional extra `jirl[torch]`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

import jax
import numpy as np
from absl import app, flags

from jirl.models import build_model, init_model_variables
from jirl.runtime import flags as jflags
from jirl.runtime.checkpoints import write_model_checkpoint
from jirl.runtime.torch_io import ConversionError

# model -> (the flags naming its source files, what each one is)
SOURCES: dict[str, dict[str, str]] = {
    "dirl": {"encoder": "official DIRL encoder state_dict (.pth)",
             "decoder": "official DIRL decoder state_dict (.pth)"},
    "unet": {"checkpoint": "official state_dict (.pth): MadisNet's UNet g_epoch*.pth, or "
                           "RainNet's generator net_G*.pth"},
    "madisnet": {"g": "MadisNet localizer (.pth: official g_epoch*.pth, libcom Inharmonious_G.pth)",
                 "ihdrnet": "MadisNet iHDRNet (.pth: official ihdrnet_epoch*.pth, libcom IHDRNet.pth)",
                 "domain_encoder": "optional MadisNet E_dom (.pth: domain_encoder_epoch*.pth); "
                                   "without it E_dom keeps its initialization (training only)"},
}
SOURCES["rainnet"] = {
    "checkpoint": SOURCES["unet"]["checkpoint"],
    "discriminator": "optional RainNet discriminator (.pth: net_D*.pth); without it D keeps its "
                     "initialization (training only)"}
OPTIONAL = {"domain_encoder", "discriminator"}  # source flags that may be left out
FLAGS = flags.FLAGS


def _loader(model: str, files: dict[str, str], localizer: str = "") -> Callable[[dict], dict]:
    """target variables -> variables filled from the official files of `model`."""
    if model == "dirl":
        from jirl.convert import dirl

        return lambda target: dirl.load_official(files["encoder"], files["decoder"], target)
    if model == "madisnet":
        from jirl.convert import madisnet

        return lambda target: madisnet.load_official(
            files["g"], files["ihdrnet"], target, localizer, files.get("domain_encoder"))
    if model == "rainnet":
        from jirl.convert import rainnet

        return lambda target: rainnet.load_official(files["checkpoint"], target,
                                                    files.get("discriminator"))
    from jirl.convert import unet

    return lambda target: unet.load_official(files["checkpoint"], target)


def convert(model: str, files: dict[str, str], out: str, config) -> str:
    """Builds `config`'s model, fills it from the official `files`, writes it to `out`."""
    if config.model.name != model:
        raise ConversionError(f"--config builds {config.model.name!r}, not {model!r}; pass "
                              f"--config {model} (or a variant of it)")
    if os.path.exists(out) and os.listdir(out):
        raise ConversionError(f"--out {out} exists and is not empty; choose a new directory")
    _, module = build_model(config)
    if any(k in OPTIONAL and k not in files for k in SOURCES[model]):
        # a part left out keeps its initialization (e.g. a discriminator to train from scratch)
        target = jax.device_get(init_model_variables(config, module))
    else:  # every parameter comes from the files (the loaders check it): shapes are enough
        shapes = jax.eval_shape(lambda: init_model_variables(config, module))
        target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    localizer = config.model.localizer.name if model == "madisnet" else ""
    variables = _loader(model, files, localizer)(target)
    meta = {"model": model, "source": {k: os.path.abspath(v) for k, v in files.items()},
            "config": json.loads(config.to_json_best_effort())}
    return write_model_checkpoint(out, variables, meta)


def _model_from_argv(argv: list[str]) -> str | None:
    """The model named on the command line (read before parsing, for --config's default)."""
    return next((arg for arg in argv[1:] if arg in SOURCES), None)


def define_flags(model: str | None) -> None:
    """--config (default: the shipped config named <model>), --out and every model's
    source-file flags."""
    jflags.define_config_flag(default=model if model in SOURCES else None, required=False,
                              help_text="Config giving the architecture (default: the model's "
                              "own, e.g. dirl; a name or a file, with --config.key=value).")
    flags.DEFINE_string("out", None, "Output checkpoint directory (new or empty).")
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
    missing = [f"--{k}" for k, v in [*files.items(), ("out", FLAGS.out)] if not v]
    if missing:
        raise app.UsageError(f"{model} needs {', '.join(missing)}")
    try:
        path = convert(model, files, FLAGS.out, FLAGS.config)
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

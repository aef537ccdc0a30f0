"""python -m jirl.convert dirl --encoder E.pth --decoder D.pth --out DIR [--config FILE]
   python -m jirl.convert unet --checkpoint G.pth --out DIR [--config FILE]

Writes an Orbax checkpoint that `eval.py --checkpoint DIR` and `train.py --config.init_from=DIR`
accept. The model architecture comes from --config (default configs/<model>.py, the official one).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import jax


def _load_config(path: str):
    file, _, variant = path.partition(":")
    spec = importlib.util.spec_from_file_location("jirl_convert_config", file)
    if spec is None or not os.path.isfile(file):
        raise SystemExit(f"config file {file} does not exist")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(file))))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant or None)


def _write_converted(args: argparse.Namespace, name: str, load, source: dict) -> str:
    """Builds the --config model, fills its variables with `load(target)`, writes the checkpoint."""
    from jirl.convert.torch_io import ConversionError
    from jirl.models import build_model, init_model_variables
    from jirl.training.checkpoints import write_model_checkpoint

    if os.path.exists(args.out) and os.listdir(args.out):
        raise ConversionError(f"--out {args.out} exists and is not empty; choose a new directory")
    config = _load_config(args.config)
    _, model = build_model(config)
    target = jax.device_get(init_model_variables(config, model))
    variables = load(target)
    meta = {"model": name, "source": source, "config": {"model": config.model.to_dict()}}
    return write_model_checkpoint(args.out, variables, meta)


def convert_dirl(args: argparse.Namespace) -> str:
    from jirl.convert import dirl as convert

    return _write_converted(
        args, "dirl", lambda target: convert.load_official(args.encoder, args.decoder, target),
        {"encoder": os.path.abspath(args.encoder), "decoder": os.path.abspath(args.decoder)})


def convert_unet(args: argparse.Namespace) -> str:
    from jirl.convert import unet as convert

    return _write_converted(
        args, "unet", lambda target: convert.load_official(args.checkpoint, target),
        {"checkpoint": os.path.abspath(args.checkpoint)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jirl.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="model", required=True)
    p = sub.add_parser("dirl", help="official DIRL encoder + decoder .pth files")
    p.add_argument("--encoder", required=True, help="official encoder state_dict (.pth)")
    p.add_argument("--decoder", required=True, help="official decoder state_dict (.pth)")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--config", default="configs/dirl.py", help="config giving the architecture")
    p.set_defaults(convert=convert_dirl)
    p = sub.add_parser("unet", help="official MadisNet UNet .pth file (e.g. g_epoch*.pth)")
    p.add_argument("--checkpoint", required=True, help="official UNet state_dict (.pth)")
    p.add_argument("--out", required=True, help="output checkpoint directory")
    p.add_argument("--config", default="configs/unet.py", help="config giving the architecture")
    p.set_defaults(convert=convert_unet)
    args = parser.parse_args(argv)
    from jirl.convert.torch_io import ConversionError

    try:
        path = args.convert(args)
    except ConversionError as e:
        print(f"python -m jirl.convert: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

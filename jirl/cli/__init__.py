"""The `jirl` command: one entry point, a subcommand per job.

  jirl train    --config dirl:quick [--workdir DIR] [--config.key=value ...]
  jirl eval     --checkpoint DIR | --config NAME [--workdir DIR] [--output DIR]
  jirl predict  --checkpoint DIR --input PHOTOS [--output DIR] [--harmonizer DIR]
  jirl convert  dirl|unet|madisnet|rainnet --out DIR <the official .pth files>
  jirl demo     --checkpoint DIR [--harmonizer DIR] [--port 7860]
  jirl ablation --config rsrnet:quick [--variants row2,row9] [--workdir DIR]

`jirl <command> --help` lists a command's flags. The same code runs as `python train.py`,
`python eval.py`, `python predict.py` in a clone and as `python -m jirl <command>`,
`python -m jirl.convert`, `python -m jirl.demo`, `python -m jirl.ablation`.
"""

from __future__ import annotations

import importlib
import sys

# command -> (the module whose `run(argv)` it is, what it does)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("jirl.cli.train", "train a model (resumes from its workdir)"),
    "eval": ("jirl.cli.eval", "score a checkpoint on a split (AP / F1 / IoU; MSE / PSNR / fMSE)"),
    "predict": ("jirl.cli.predict", "find (and harmonize) the inharmonious region of your photos"),
    "convert": ("jirl.convert.__main__", "import official PyTorch checkpoints"),
    "demo": ("jirl.demo.__main__", "a local web page to try a model on your photos"),
    "ablation": ("jirl.ablation.__main__", "train and score several variants of a config, tabulated"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: jirl <command> [flags]   (jirl <command> --help: its flags)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Runs `jirl <command> ...` (argv defaults to sys.argv)."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(usage())
        sys.exit(0 if len(argv) >= 2 else 2)
    command = argv[1]
    if command not in COMMANDS:
        print(f"jirl: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        sys.exit(2)
    # The config flag reads its --config.key=value overrides from sys.argv: the command's own.
    sys.argv = [f"jirl {command}", *argv[2:]]
    importlib.import_module(COMMANDS[command][0]).run(sys.argv)

"""The absl flags every command shares: --config (a name or a file, with --config.key=value
overrides) and --workdir, and the logging they start with."""

from __future__ import annotations

import logging as pylogging
import os
import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from jirl.runtime import configs, distributed

FLAGS = flags.FLAGS


class _NamedConfigParser(flags.ArgumentParser):
    """ml_collections' config-file parser, given the file that a name or path resolves to."""

    def __init__(self, file_parser: flags.ArgumentParser):
        self._file_parser = file_parser

    def parse(self, argument):
        return self._file_parser.parse(configs.resolve(argument))

    def flag_type(self) -> str:
        return self._file_parser.flag_type()


def define_config_flag(name: str = "config", default: str | None = None, *,
                       required: bool = True, lock_config: bool = True,
                       help_text: str | None = None) -> None:
    """--<name> NAME[:variant] or FILE[:variant] (see `jirl.runtime.configs`), with
    --<name>.key=value overrides."""
    config_flags.DEFINE_config_file(
        name, None, help_text or "Config: a name (dirl, dirl:quick; shipped with jirl: "
        f"{', '.join(configs.available())}) or a file (configs/dirl.py:quick, my_config.py).",
        lock_config=lock_config)
    FLAGS[name].parser = _NamedConfigParser(FLAGS[name].parser)
    if default is not None:
        FLAGS.set_default(name, default)
    if required:
        flags.mark_flag_as_required(name)


def define_command(define: Callable[[], None]) -> None:
    """Runs `define` (a command's flag definitions) and makes the flags it defined the ones that
    `--help` lists for this command (absl lists the key flags of `sys.argv[0]`)."""
    before = set(FLAGS)
    define()
    for name in sorted(set(FLAGS) - before):
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])


def run_command(main: Callable[[list[str]], Any], define: Callable[[], None], doc: str,
                argv: list[str] | None = None) -> None:
    """Runs a command: its flags defined (`define_command`), `doc` as the usage that --help and
    usage errors print, then `main` under absl (`argv`: sys.argv by default); an int `main`
    returns is the exit status."""
    main_module = sys.modules.get("__main__")
    if main_module is not None:
        main_module.__doc__ = doc
    define_command(define)
    app.run(lambda args: sys.exit(main(args)), argv=argv)


def begin(argv: list[str], *, join_processes: bool = False) -> None:
    """The start of a command's `main`: positional arguments refused, with `join_processes` the
    multi-process run joined (`distributed.initialize_from_flags`, before anything touches
    devices), the libraries' INFO logs quieted."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if join_processes:
        distributed.initialize_from_flags()
    quiet_libraries()


def define_flags() -> None:
    """--config (required) and --workdir: what train and eval share."""
    define_config_flag()
    flags.DEFINE_string("workdir", None,
                        "Run directory (checkpoints, logs). Default: runs/<config>[_<variant>].")


def default_workdir(name: str = "config") -> str:
    """runs/<config name>[_<variant>], e.g. runs/dirl_quick for dirl:quick or configs/dirl.py:quick."""
    file, variant = configs.split(config_flags.get_config_filename(FLAGS[name]))
    stem = os.path.splitext(os.path.basename(file))[0]
    variant = (variant or "").replace(",", "_")
    return os.path.join("runs", f"{stem}_{variant}" if variant else stem)


def workdir() -> str:
    """--workdir, else `default_workdir()`."""
    return FLAGS.workdir or default_workdir()


def quiet_libraries() -> None:
    """Keeps Orbax / TFDS INFO chatter off the console unless --verbosity asks for it."""
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
        for name in ("", "orbax", "jax", "tensorflow_datasets"):
            pylogging.getLogger(name).setLevel(pylogging.WARNING)

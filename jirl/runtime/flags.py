"""The absl flags the commands share, one name per concept (docs/commands.md has the table):

  --config     a config by name or file, with --config.key=value overrides (train, eval, ablation;
               predict for a checkpoint without one; convert for the architecture)
  --workdir    a run's folder: its checkpoints and logs (train, ablation; eval reads from it)
  --output     where results go (eval, predict, convert)
  --dtype      the compute precision (train, eval, predict, demo, ablation)
  --batch_size examples per step or model call (train, eval, predict, ablation)
  --normalize  the official per-image min-max normalization before thresholding (eval, predict)
  --resize / --long_side   the resolution policy for photos (predict, demo; jirl.predict)

On the config-driven commands, --dtype / --batch_size / --normalize set their config keys
(`apply_to_config`); a disagreeing --config.key=value override is an error. Renamed flags keep
working for one release with a line saying so (`define_deprecated`). A --config.key=value for a
key the config does not have is one line naming the closest key, not a traceback.
"""

from __future__ import annotations

import difflib
import logging as pylogging
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
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

    def run_main(args: list[str]) -> None:
        _apply_deprecated()
        sys.exit(main(args))

    app.run(run_main, argv=argv, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, with an unknown --config.key reported in one line (ml_collections raises
    an AttributeError or KeyError from inside the parser)."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError) as e:
        problem = override_problem(argv) or f"a --config.key=value override failed: {e}"
        print(f"{argv[0]}: {problem}", file=sys.stderr)
        sys.exit(2)


def override_problem(argv: Sequence[str], name: str = "config") -> str | None:
    """What is wrong with the first --<name>.key=value in `argv` whose key the config lacks:
    the key, and the closest existing one; None when every key exists (or no config is named)."""
    argument = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), None)
    if argument is None and f"--{name}" in argv and argv.index(f"--{name}") + 1 < len(argv):
        argument = argv[argv.index(f"--{name}") + 1]
    if argument is None:
        return None
    try:
        node = configs.load(argument)
    except Exception:  # noqa: BLE001 - the config itself is reported by its own flag
        return None
    for arg in argv:
        match = re.match(rf"--(?:no)?{name}\.([\w.]+)", arg)
        if not match:
            continue
        path, current = match.group(1).split("."), node
        for depth, part in enumerate(path):
            keys = list(current.keys()) if isinstance(current, Mapping | ml_collections.ConfigDict) else []
            if part not in keys:
                where = ".".join(path[:depth])
                close = difflib.get_close_matches(part, keys, n=1)
                fixed = ".".join([*path[:depth], *close[:1], *path[depth + 1:]])
                hint = (f"; did you mean --{name}.{fixed}?" if close
                        else f"; it has {', '.join(sorted(keys))}" if keys else "")
                return (f"--{name}.{match.group(1)}: the config has no key {part!r}"
                        f"{' under ' + where if where else ''}{hint}")
            current = current[part]
    return None


_DEPRECATED: dict[str, tuple[str, bool]] = {}  # old flag -> (its new name, negated)


def define_deprecated(old: str, new: str, *, negated: bool = False) -> None:
    """--<old>, a flag renamed --<new>: it still works for one release, with a line saying so,
    and sets --<new> (a negated boolean: to the opposite value)."""
    flag = FLAGS[new]
    spelled = f"--no{new}" if negated else f"--{new}"
    if flag.boolean:
        flags.DEFINE_bool(old, None, f"Deprecated: use {spelled}.")
    else:
        flags.DEFINE(flag.parser, old, None, f"Deprecated: use {spelled}.", serializer=flag.serializer)
    _DEPRECATED[old] = (new, negated)


def _apply_deprecated() -> None:
    for old, (new, negated) in _DEPRECATED.items():
        if old not in FLAGS or not FLAGS[old].present:
            continue
        if FLAGS[new].present:
            raise app.UsageError(f"--{old} is the old name of --{new}: pass --{new} only")
        FLAGS[new].value = (not FLAGS[old].value) if negated else FLAGS[old].value
        spelled = f"--no{new}" if negated else f"--{new}=..."
        print(f"{os.path.basename(sys.argv[0])}: --{old} is deprecated and goes in the next "
              f"release; use {spelled}", file=sys.stderr)


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


# ------------------------------------------------------------------------------------------------
# One flag per concept


def define_dtype_flag(choices: Sequence[str], default: str | None, help_text: str) -> None:
    """--dtype: the compute precision."""
    flags.DEFINE_enum("dtype", default, list(choices), help_text)


def define_batch_size_flag(help_text: str) -> None:
    """--batch_size: examples per step or model call."""
    flags.DEFINE_integer("batch_size", None, help_text, lower_bound=1)


def define_normalize_flag(default: bool | None = True) -> None:
    """--normalize / --nonormalize: the official per-image min-max normalization before the
    threshold (False: threshold the raw probabilities)."""
    flags.DEFINE_bool("normalize", default, "Threshold masks after the official per-image min-max "
                      "normalization (--nonormalize: the raw probabilities).")


def shorthand_values(keys: Mapping[str, str], name: str = "config") -> dict[str, Any]:
    """{dotted config key: value} of each flag of `keys` ({flag: config key}) that was given; a
    --<name>.key=value override of the same key with another value is a usage error."""
    overrides = config_flags.get_override_values(FLAGS[name]) if FLAGS[name].value is not None else {}
    values = {}
    for flag, key in keys.items():
        if not FLAGS[flag].present:
            continue
        value = FLAGS[flag].value
        if key in overrides and overrides[key] != value:
            raise app.UsageError(f"--{flag}={value} contradicts --{name}.{key}={overrides[key]}")
        values[key] = value
    return values


def apply_to_config(config: ml_collections.ConfigDict, keys: Mapping[str, str],
                    name: str = "config") -> None:
    """Sets the config key of each flag of `keys` that was given (`shorthand_values`)."""
    for key, value in shorthand_values(keys, name).items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value

"""The released PyTorch weights as jirl checkpoints: conversion, recognition and a cache.

`convert(model, files, out, config)` is `jirl convert`'s work. `official_weights(spec)` is what
`jirl predict --checkpoint`, `jirl.Localizer.from_checkpoint`, `jirl.Harmonizer` and the demo do
with a checkpoint argument that names `.pth` files instead of a jirl checkpoint: one file, several
comma-separated (`G.pth,IHDRNet.pth`), or a folder holding them. The files are recognised by
their keys (a DIRL encoder + decoder pair, MadisNet's G + iHDRNet [+ E_dom] in the official or
libcom release, a UNet, RainNet's generator [+ discriminator]), converted once with the shipped
config of that system (or a given one) and kept in a cache keyed by the files' content and the
config, so the next run only hashes the files. Reading `.pth` files needs torch (`jirl[torch]`);
without it a cached conversion still loads, and otherwise the error gives the exact
`jirl convert` command to run where torch is installed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from jirl import files as jfiles
from jirl.models import build_model, init_model_variables
from jirl.runtime import configs
from jirl.runtime.checkpoints import resolve_checkpoint, write_model_checkpoint
from jirl.runtime.torch_io import ConversionError, TorchMissingError, load_state_dict

# model -> (the flags naming its source files, what each one is)
SOURCES: dict[str, dict[str, str]] = {
    "dirl": {"encoder": "official DIRL encoder state_dict (.pth: encoder_epoch*.pth)",
             "decoder": "official DIRL decoder state_dict (.pth: decoder_epoch*.pth)"},
    "unet": {"checkpoint": "official UNet state_dict (.pth): MadisNet's UNet g_epoch*.pth"},
    "madisnet": {"g": "MadisNet localizer (.pth: official g_epoch*.pth, libcom Inharmonious_G.pth)",
                 "ihdrnet": "MadisNet iHDRNet (.pth: official ihdrnet_epoch*.pth, libcom IHDRNet.pth)",
                 "domain_encoder": "optional MadisNet E_dom (.pth: domain_encoder_epoch*.pth); "
                                   "without it E_dom keeps its initialization (training only)"},
    "rainnet": {"checkpoint": "official RainNet generator (.pth: net_G_last.pth)",
                "discriminator": "optional RainNet discriminator (.pth: net_D*.pth); without it D "
                                 "keeps its initialization (training only)"},
}
OPTIONAL = {"domain_encoder", "discriminator"}  # source flags that may be left out
WEIGHT_SUFFIXES = (".pth", ".pt")
CACHE = "converted"  # under jirl's user cache folder (`jirl.files.user_cache_dir`)


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


def convert(model: str, files: dict[str, str], out: str, config: ml_collections.ConfigDict) -> str:
    """Builds `config`'s model, fills it from the official `files` ({source flag: path}), writes
    it to `out` (new or empty) and returns the step directory."""
    if config.model.name != model:
        raise ConversionError(f"the config builds {config.model.name!r}, not {model!r}; pass "
                              f"--config {model} (or a variant of it)")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConversionError(f"--output {out} is a file; name a new directory")
    if os.path.exists(out) and os.listdir(out):
        raise ConversionError(f"--output {out} exists and is not empty; choose a new directory")
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


# ------------------------------------------------------------------------------------------------
# Recognising released files


def classify(sd: Mapping[str, np.ndarray]) -> str | None:
    """What network an official state_dict holds, from its keys: "dirl_encoder", "dirl_decoder",
    "dirl_net" (MadisNet's G around DIRL), "unet", "ihdrnet", "domain_encoder", "rainnet_g",
    "rainnet_d"; None when it is none of them."""
    keys = set(sd)

    def has(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    if has("inconv.", "encoder1.") and not has("trans."):
        return "dirl_encoder"
    if has("trans.") and has("attention_layers.", "decoder_layers."):
        return "dirl_decoder"
    if has("encoder.inconv.", "encoder.encoder1.") and has("decoder.trans."):
        return "dirl_net"
    if has("in_conv.") and has("downs."):
        return "unet"
    if has("coeffs.") and has("guide."):
        return "ihdrnet"
    if has("adaptor0.") and "weight" in keys:
        return "domain_encoder"
    if has("model_layer0."):
        return "rainnet_g"
    if has("D.conv", "convl1."):
        return "rainnet_d"
    return None


# (model, {source flag: the network it takes}, the shipped config it converts with)
_SYSTEMS = (
    ("dirl", {"encoder": "dirl_encoder", "decoder": "dirl_decoder"}, "dirl"),
    ("madisnet", {"g": "dirl_net", "ihdrnet": "ihdrnet"}, "madisnet"),
    ("madisnet", {"g": "unet", "ihdrnet": "ihdrnet"}, "madisnet:unet"),
    ("unet", {"checkpoint": "unet"}, "unet"),
    ("rainnet", {"checkpoint": "rainnet_g"}, "rainnet"),
)
_EXTRAS = {"madisnet": ("domain_encoder", "domain_encoder"), "rainnet": ("discriminator", "rainnet_d")}
_LABELS = {"dirl": "DIRL", "madisnet": "MadisNet", "unet": "UNet", "rainnet": "RainNet"}


@dataclasses.dataclass(frozen=True)
class OfficialSet:
    """Released files recognised as one model: `files` by `jirl convert` flag, `config` the
    config argument it converts with by default (a shipped config, e.g. "madisnet:unet")."""

    model: str
    files: dict[str, str]
    config: str

    @property
    def label(self) -> str:
        return _LABELS[self.model]


def weight_files(spec: str) -> list[str] | None:
    """The `.pth` files a checkpoint argument names (comma-separated files, one file, or a folder
    holding them and no jirl checkpoint), or None when it names no such files."""
    parts = [os.path.expanduser(p.strip()) for p in spec.split(",") if p.strip()]
    if len(parts) > 1 or (parts and parts[0].lower().endswith(WEIGHT_SUFFIXES)):
        return parts
    if len(parts) == 1 and os.path.isdir(parts[0]):
        names = sorted(os.listdir(parts[0]))
        jirl_checkpoint = any(n in ("model", "best", "checkpoints") or n.isdigit() for n in names)
        found = [os.path.join(parts[0], n) for n in names if n.lower().endswith(WEIGHT_SUFFIXES)]
        if found and not jirl_checkpoint:
            return found
    return None


def identify(paths: Sequence[str]) -> OfficialSet:
    """The model the released files `paths` hold (read with torch), by the networks they
    contain; a ConversionError says what each file is when they do not make one model."""
    for p in paths:
        if not os.path.isfile(p):
            raise ConversionError(f"weights file {p} does not exist")
    roles: dict[str, str] = {}
    described = []
    for p in paths:
        role = classify(load_state_dict(p))
        described.append(f"  {p}: {role or 'not a network jirl imports'}")
        if role is None or role in roles:
            why = (f"{p} is no DIRL, MadisNet, UNet or RainNet network jirl imports" if role is None
                   else f"{roles[role]} and {p} hold the same network ({role}): pass the files "
                        "you mean, comma-separated")
            raise ConversionError(why + "; the files:\n" + "\n".join(described))
        roles[role] = p
    for model, flags, config in _SYSTEMS:
        extra_flag, extra_role = _EXTRAS.get(model, (None, None))
        if set(roles) - {extra_role} == set(flags.values()):
            chosen = {flag: roles[role] for flag, role in flags.items()}
            if extra_role in roles:
                chosen[extra_flag] = roles[extra_role]
            return OfficialSet(model, chosen, config)
    raise ConversionError(
        "these files do not make one model (a DIRL encoder + decoder; MadisNet's G + iHDRNet, "
        "optionally + E_dom; a UNet; RainNet's generator, optionally + discriminator):\n"
        + "\n".join(described))


def _guess_from_names(paths: Sequence[str]) -> OfficialSet | None:
    """The model the files' names suggest (the released names), for a message without torch."""
    by_flag = {}
    patterns = (("encoder_epoch", "encoder"), ("decoder_epoch", "decoder"),
                ("domain_encoder", "domain_encoder"), ("ihdrnet", "ihdrnet"),
                ("inharmonious_g", "g"), ("g_epoch", "g"), ("net_g", "checkpoint"),
                ("net_d", "discriminator"))
    for p in paths:
        name = os.path.basename(p).lower()
        flag = next((f for pattern, f in patterns if name.startswith(pattern)), None)
        if flag is None:
            return None
        by_flag[flag] = p
    for model, sources in SOURCES.items():
        needed = {f for f in sources if f not in OPTIONAL}
        if needed <= set(by_flag) <= set(sources):
            return OfficialSet(model, by_flag, model)
    return None


def convert_command(found: OfficialSet, out: str = "DIR") -> str:
    """The `jirl convert` command line that converts `found`."""
    flags = " ".join(f"--{flag} {path}" for flag, path in found.files.items())
    config = f" --config {found.config}" if found.config != found.model else ""
    return f"jirl convert {found.model} {flags} --output {out}{config}"


# ------------------------------------------------------------------------------------------------
# The conversion cache


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(paths: Sequence[str], config: ml_collections.ConfigDict | None) -> str:
    """The files' contents (in any order) and the config they are converted with, hashed."""
    h = hashlib.sha256()
    for digest in sorted(_file_digest(p) for p in paths):
        h.update(digest.encode())
    h.update(b"official" if config is None else config.to_json_best_effort(sort_keys=True).encode())
    return h.hexdigest()[:24]


def _inference_config(found: OfficialSet) -> ml_collections.ConfigDict:
    """The shipped config of `found`'s system, without the training-only networks whose files
    were not given (E_dom, RainNet's discriminator): they would only be random weights."""
    config = configs.load(found.config)
    if found.model == "madisnet" and "domain_encoder" not in found.files:
        config.model.domain_encoder = False
    if found.model == "rainnet" and "discriminator" not in found.files:
        config.model.discriminator = False
    return config


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def official_weights(spec: str, config: ml_collections.ConfigDict | None = None, *,
                     announce: Callable[[str], None] = _say) -> str | None:
    """The step directory of a jirl checkpoint converted from the released files that `spec`
    names (see `weight_files`), converting them on the first use; None when `spec` names no
    `.pth` files. `config` replaces the shipped config of the recognised system (e.g. the 512 px
    RainNet release: rainnet with data.crop_size=512). One line is announced per call: the
    conversion, or the cached one it reuses."""
    paths = weight_files(spec)
    if paths is None:
        return None
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise ConversionError(f"weights file {missing[0]} does not exist")
    root = jfiles.user_cache_dir(CACHE)
    key = cache_key(paths, config)
    entry = os.path.join(root, key)
    names = ", ".join(os.path.basename(p) for p in paths)
    if os.path.isdir(entry):
        announce(f"using {entry}, converted earlier from {names}")
        return resolve_checkpoint(entry)
    try:
        found = identify(paths)
    except TorchMissingError as e:
        guess = _guess_from_names(paths)
        how = (f"run, where torch is installed: {convert_command(guess)}, then pass --checkpoint DIR"
               if guess else "convert them with `jirl convert` where torch is installed (see "
               "jirl convert --help), then pass the output folder")
        raise ConversionError(f"{names} are PyTorch weights; {e}. Or {how}") from None
    given_config = config
    if config is None:
        config = _inference_config(found)
    os.makedirs(root, exist_ok=True)
    tmp = os.path.join(root, f".{key}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        try:
            convert(found.model, found.files, tmp, config)
        except ConversionError as e:
            raise ConversionError(
                f"{e}\nthe {found.label} files {names} do not fit the config they were converted "
                f"with ({found.config if given_config is None else 'the one given'}); if they come "
                "from another setting, pass its config (--config NAME --config.key=value, or "
                "config=...)") from None
        jfiles.write_json(os.path.join(tmp, "source.json"),
                          {"model": found.model, "files": found.files, "config": found.config})
        os.replace(tmp, entry)
    except OSError:
        if not os.path.isdir(entry):  # not a conversion another process finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    announce(f"converted the official {found.label} files {names} into {entry} (once: later "
             "runs reuse it)")
    return resolve_checkpoint(entry)

"""Every command in the README and docs/ is one jirl takes, and the marked blocks run.

* Each bash block's jirl commands (`jirl <job>`, `python train.py | eval.py | predict.py`,
  `python -m jirl[.<job>]`) are checked against the job's own flags: every flag defined, every
  enum value allowed, every `--config` found, every `--config.key=value` key in that config.
* Each python block compiles.
* The blocks marked `<!-- runs in tests/test_docs.py -->` run, in document order, in one working
  directory holding tiny stand-ins for what they name (photos; released weights written from tiny
  models by tests/official_files.py), with tiny sizes appended to each command.
"""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from jirl_testing import (
    ROOT,
    subprocess_env,
    tiny_checkpoint,
    tiny_dirl_config,
    tiny_madisnet_config,
    tiny_rainnet_config,
)
from PIL import Image

from jirl.cli import COMMANDS
from jirl.convert import official
from jirl.runtime import configs
from jirl.runtime.flags import override_problem

MARK = "<!-- runs in tests/test_docs.py -->"
PAGES = ["README.md", *sorted(os.path.join("docs", n) for n in os.listdir(os.path.join(ROOT, "docs"))
                               if n.endswith(".md"))]
SCRIPTS = {"train.py": "train", "eval.py": "eval", "predict.py": "predict"}


def blocks(page: str) -> list[tuple[int, str, str, bool]]:
    """(line, language, text, marked to run) of every fenced code block of `page`."""
    lines = open(os.path.join(ROOT, page), encoding="utf-8").read().splitlines()
    found, i = [], 0
    while i < len(lines):
        match = re.match(r"^```(\w*)\s*$", lines[i])
        if not match:
            i += 1
            continue
        start = i
        i += 1
        while not lines[i].startswith("```"):
            i += 1
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        found.append((start + 1, match[1], "\n".join(lines[start + 1:i]), previous.strip() == MARK))
        i += 1
    return found


def commands(text: str) -> list[list[str]]:
    """The command lines of a shell block (continuations joined, comments dropped, `&&` split)."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            out.append(words[:cut])
            words = words[cut + 1:]
    return [c for c in out if c]


def job(argv: list[str]) -> tuple[str, list[str]] | None:
    """(jirl job, its arguments) of a command line, None for other commands (pip, benchmarks)."""
    if argv[0] == "jirl" and len(argv) > 1:
        return argv[1], argv[2:]
    if argv[0] == "python" and len(argv) > 1 and argv[1] in SCRIPTS:
        return SCRIPTS[argv[1]], argv[2:]
    if argv[:2] == ["python", "-m"] and len(argv) > 2 and argv[2].split(".")[0] == "jirl":
        if argv[2] == "jirl":
            return argv[3], argv[4:]
        return argv[2].split(".")[1], argv[3:]
    return None


def documented() -> list[tuple[str, int, list[str]]]:
    """(page, line, command) of every jirl command in a bash block of the README and docs/."""
    return [(page, line, argv) for page in PAGES for line, lang, text, _ in blocks(page)
            if lang in ("bash", "sh") for argv in commands(text) if job(argv)]


SPEC_SCRIPT = """
import importlib, json, sys
from absl import flags
from jirl.cli import COMMANDS
job = sys.argv[1]
module = importlib.import_module(COMMANDS[job][0])
module.define_flags(None) if job == "convert" else module.define_flags()
print(json.dumps({name: {"boolean": bool(flags.FLAGS[name].boolean),
                         "enum": list(getattr(flags.FLAGS[name].parser, "enum_values", None) or [])}
                  for name in flags.FLAGS}))
"""


@pytest.fixture(scope="module")
def flag_specs():
    """{job: {flag: {"boolean", "enum"}}}: what each job defines (one process each, at once)."""
    procs = {j: subprocess.Popen([sys.executable, "-c", SPEC_SCRIPT, j], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, cwd=ROOT) for j in COMMANDS}
    specs = {}
    for j, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        specs[j] = json.loads(out.strip().splitlines()[-1])
    return specs


def problems(command: list[str], specs: dict) -> list[str]:
    """What the jirl job of `command` would refuse in it (flags, values, configs, config keys)."""
    name, args = job(command)
    if name not in specs:
        return [f"no job {name!r}"]
    spec, found, positional = specs[name], [], []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-"):
            positional.append(arg)
            continue
        flag, eq, value = arg.lstrip("-").partition("=")
        if re.match(r"(no)?config\.", flag):
            continue  # --config.key=value: checked against the config below
        if flag not in spec and flag.startswith("no") and spec.get(flag[2:], {}).get("boolean"):
            continue
        if flag not in spec:
            found.append(f"unknown flag --{flag}")
            if not eq and i < len(args) and not args[i].startswith("-"):
                i += 1  # its value, presumably
            continue
        if spec[flag]["boolean"]:
            continue
        if not eq:
            value, i = args[i], i + 1
        if spec[flag]["enum"] and value not in spec[flag]["enum"]:
            found.append(f"--{flag}={value}: not one of {spec[flag]['enum']}")
        if flag == "config":
            try:
                configs.resolve(value)
            except ValueError as e:
                found.append(str(e))
    if name == "convert" and (len(positional) != 1 or positional[0] not in official.SOURCES):
        found.append(f"convert names one model of {list(official.SOURCES)}, got {positional}")
    elif name != "convert" and positional:
        found.append(f"unexpected arguments {positional}")
    if not found:
        found += [p for p in [override_problem([name, *args])] if p]
    return found


def test_every_documented_command_is_one_jirl_takes(flag_specs):
    listed = documented()
    assert len(listed) >= 40, len(listed)  # the docs do document commands
    bad = [f"{page}:{line}: {' '.join(argv)}\n  {p}" for page, line, argv in listed
           for p in problems(argv, flag_specs)]
    assert bad == [], "\n".join(bad)


def test_the_check_sees_a_renamed_flag_and_a_wrong_value(flag_specs):
    """The check can fail: a flag that is not defined (the old --out spelled --outdir), an enum
    value out of range, an unknown config and a config key typo are each reported."""
    assert problems(["jirl", "convert", "dirl", "--outdir", "x"], flag_specs) == [
        "unknown flag --outdir"]
    assert problems(["jirl", "predict", "--resize", "huge"], flag_specs) == [
        "--resize=huge: not one of ['train', 'native', 'long_side']"]
    assert "no config file 'nope'" in problems(["jirl", "train", "--config", "nope"], flag_specs)[0]
    assert problems(["jirl", "train", "--config", "dirl", "--config.batchsize=2"], flag_specs) == [
        "--config.batchsize: the config has no key 'batchsize'; did you mean --config.batch_size?"]
    assert problems(["python", "train.py", "--config", "configs/dirl.py:quick", "--nowarmup"],
                    flag_specs) == ["unknown flag --nowarmup"]


def test_every_python_block_compiles():
    for page in PAGES:
        for line, lang, text, _ in blocks(page):
            if lang == "python":
                compile(text, f"{page}:{line}", "exec")


# ------------------------------------------------------------------------------------------------
# The marked blocks, run

TINY = {
    "dirl": ["--config.model.stem_features=4", "--config.model.stage_features=(4,4,8,8,8)",
             "--config.model.stage_blocks=(1,1,1,1,1)", "--config.model.ggd_ch=4"],
    "madisnet": ["--config.model.localizer.stem_features=8",
                 "--config.model.localizer.stage_features=(8,8,16,16,16)",
                 "--config.model.localizer.stage_blocks=(1,1,1,1,1)",
                 "--config.model.localizer.ggd_ch=4", "--config.model.ihdrnet.luma_bins=4",
                 "--config.model.ihdrnet.splat_layers=2", "--config.model.domain_encoder=False"],
    "rainnet": ["--config.model.ngf=4", "--config.model.blocks=1", "--config.model.ndf=4",
                "--config.model.d_strided=2"],
}
WEIGHTS = {"encoder_epochbest.pth": "dirl", "Inharmonious_G.pth": "madisnet"}  # -> their family


def _photo(seed: int, h: int = 48, w: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h // 8, w // 8, 3), np.uint8)).resize((w, h))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A working directory with what the documented commands name, and their environment."""
    from official_files import libcom_files, rainnet_generator_file
    from test_convert import official_dirl_files

    root = tmp_path_factory.mktemp("docs")
    (root / "photos").mkdir()
    for i in range(2):
        _photo(i).save(root / "photos" / f"p{i}.png")
    _photo(7).save(root / "photo.jpg")
    region = np.zeros((48, 64), np.uint8)
    region[10:30, 20:44] = 255
    Image.fromarray(region).save(root / "region.png")
    models = root / "models"
    _, _, dirl = tiny_checkpoint(models / "dirl", tiny_dirl_config())
    enc, dec = official_dirl_files(dirl, root)
    os.rename(enc, root / "encoder_epochbest.pth")
    os.rename(dec, root / "decoder_epochbest.pth")
    _, _, madisnet = tiny_checkpoint(models / "madisnet", tiny_madisnet_config(domain_encoder=False))
    libcom_files(madisnet, root)
    rainnet = tiny_rainnet_config()
    _, _, harmonizer = tiny_checkpoint(models / "rainnet", rainnet)
    rainnet_generator_file(harmonizer, root / "net_G_last.pth")
    env = {**subprocess_env(1, cache_dir=root / "xla", checkout=False),
           "XDG_CACHE_HOME": str(root / "cache"), "JIRL_DATA_DIR": str(root / "data")}
    env.pop("PYTHONPATH", None)
    # `--harmonizer net_G_last.pth` takes no --config: its official one is full size. The tiny
    # file's conversion is put where that run looks for it: the cache entry of (the file, the
    # official config), converted with the tiny config (the cache is keyed by content).
    rainnet.model.discriminator = False
    key = official.cache_key([str(root / "net_G_last.pth")], None)
    official.convert("rainnet", {"checkpoint": str(root / "net_G_last.pth")},
                     str(root / "cache" / "jirl" / "converted" / key), rainnet)
    return root, env


def tiny(command: list[str]) -> list[str]:
    """`command` at tiny sizes: the tiny widths of its model, a tiny data set, 2 steps."""
    name, args = job(command)
    argv = [sys.executable, os.path.join(ROOT, command[1])] + args if command[0] == "python" and \
        command[1] in SCRIPTS else [os.path.join(os.path.dirname(sys.executable), "jirl"), name, *args]
    config = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"), None)
    family = os.path.basename(config).split(":")[0].removesuffix(".py") if config else None
    data = ["--config.data.crop_size=32", "--config.data.image_size=40",
            "--config.data.num_train=16", "--config.data.num_test=8"]
    if name == "train":
        return argv + TINY[family] + data + [
            "--config.num_train_steps=2", "--config.eval_every_steps=2", "--config.log_every_steps=1",
            "--config.checkpoint_every_steps=2", "--batch_size", "4", "--config.eval.batch_size=4"]
    if name == "eval":
        return argv + (TINY[family] + data if family else []) + ["--batch_size", "4"]
    if name == "convert":
        return argv + ["--config", f"{args[0]}:quick", *TINY[args[0]]]
    checkpoint = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--checkpoint"), "")
    released = next((f for w, f in WEIGHTS.items() if w in checkpoint), None)
    return argv + ([] if released is None else ["--config", f"{released}:quick", *TINY[released],
                                                 "--config.data.crop_size=32"])


def test_the_marked_blocks_run(workspace):
    root, env = workspace
    marked = [(page, line, argv) for page in PAGES for line, lang, text, runs in blocks(page)
              if runs for argv in commands(text) if job(argv)]
    assert len(marked) >= 12, len(marked)  # 12 when written (the README's and docs/commands.md's)
    for page, line, argv in marked:
        proc = subprocess.run(tiny(argv), cwd=root, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{page}:{line}: {' '.join(argv)}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, f"{page}:{line}\n{proc.stderr[-3000:]}"
    # what they wrote: the README's predictions and harmonized photo, the trained runs, a conversion
    records = [json.loads(x) for x in (root / "out" / "predictions.jsonl").read_text().splitlines()]
    assert {"p0", "p1", "photo"} <= {r["name"] for r in records}
    assert (root / "out" / "photo_harmonized.jpg").exists()
    assert (root / "runs" / "dirl_quick" / "eval.json").exists()
    assert set(os.listdir(root / "ckpt")) >= {"dirl", "libcom", "rainnet", "old_name"}

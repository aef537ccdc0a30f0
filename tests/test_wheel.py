"""jirl as people install it: a wheel built from this checkout, installed into a fresh virtual
environment, and every job run through the `jirl` console script from a directory outside the
checkout (configs by name, converted official weights, a photo of one's own).

The fresh environment gets jirl from the wheel only; its dependencies (jax, flax, torch, ...)
come from the test's own environment through a path entry, so that the test installs nothing
from the network. What it checks is the wheel: its packages, its configs, its entry point.
"""

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from jirl_testing import ROOT, stored_variables, subprocess_env
from PIL import Image

TINY = ["--config.model.stem_features=4", "--config.model.stage_features=(4,4,8,8,8)",
        "--config.model.stage_blocks=(1,1,1,1,1)", "--config.model.ggd_ch=4"]
DATA = ["--config.data.image_size=40", "--config.data.crop_size=32", "--config.data.num_train=24",
        "--config.data.num_test=8", "--config.batch_size=4", "--config.eval.batch_size=4"]


def _packages_in_checkout() -> set[str]:
    """Every package of the source tree, as the wheel must hold it (configs/ as jirl.configs)."""
    found = {"jirl.configs"}
    for folder, _, names in os.walk(os.path.join(ROOT, "jirl")):
        if "__init__.py" in names:
            found.add(os.path.relpath(folder, ROOT).replace(os.sep, "."))
    return found


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh environment's bin folder, a working directory outside the checkout, env)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy, so that building leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "*.egg-info", "__pycache__", "runs", "artifacts", ".pytest_cache"))
    wheels = root / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(wheels), str(source)],
                   check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = wheels.glob("jirl-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    # The dependencies: this environment's site-packages as plain path entries (their .pth
    # files, the checkout's editable install among them, are not run).
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(purelib, "dependencies.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    work = root / "work"
    work.mkdir()
    env = subprocess_env(1, cache_dir=root / "xla_cache", checkout=False)
    env.pop("PYTHONPATH", None)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env["PATH"]])
    return wheel, venv / "bin", work, env


def _jirl(installed, *args, timeout=600):
    _, bin_dir, work, env = installed
    proc = subprocess.run([str(bin_dir / "jirl"), *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"jirl {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_the_wheel_holds_every_package_and_config_and_no_test_tooling(installed):
    wheel, bin_dir, work, env = installed
    names = zipfile.ZipFile(wheel).namelist()
    packages = {os.path.dirname(n).replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert packages == _packages_in_checkout()
    for config in ("default", "common", "dirl", "unet", "rsrnet", "madisnet", "rainnet"):
        assert f"jirl/configs/{config}.py" in names
    assert not [n for n in names if n.startswith("tests/") or "browser" in n]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "jirl = jirl.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    where = subprocess.run([str(bin_dir / "python"), "-c", "import jirl, jirl.configs; "
                            "print(jirl.__file__); print(jirl.configs.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert all(line.startswith(str(bin_dir.parent)) for line in where.split()), where


def test_train_eval_predict_and_convert_run_from_outside_the_checkout(installed, tmp_path):
    """The quick DIRL trained for 2 steps by name (dirl:quick), scored, run on a photo, and a
    tiny official checkpoint converted, all through the installed `jirl` command."""
    *_, work, _ = installed
    data = [f"--config.data.data_dir={tmp_path / 'data'}"]
    run = tmp_path / "run"
    proc = _jirl(installed, "train", "--config", "dirl:quick", *TINY, *DATA, *data,
                 "--workdir", str(run), "--config.num_train_steps=2", "--config.eval_every_steps=2",
                 "--config.log_every_steps=1")
    assert "IoU" in proc.stdout and os.listdir(run / "checkpoints") == ["2"]

    proc = _jirl(installed, "eval", "--checkpoint", str(run))
    scores = json.loads((run / "eval.json").read_text())["results"]["mask"]["all"]
    assert scores["count"] == 8 and "AP" in proc.stdout

    photo = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    _jirl(installed, "predict", "--checkpoint", str(run), "--input", str(tmp_path / "photo.png"),
          "--output", str(tmp_path / "out"), "--compile_cache=")
    mask = np.asarray(Image.open(tmp_path / "out" / "photo_mask.png"))
    assert mask.shape == (50, 70)
    assert len((tmp_path / "out" / "predictions.jsonl").read_text().splitlines()) == 1

    pytest.importorskip("torch", reason="the optional extra jirl[torch] is not installed")
    from test_convert import official_dirl_files

    encoder, decoder = official_dirl_files(stored_variables(run / "checkpoints" / "2"), tmp_path)
    # configs/dirl.py is no file here: the name of the config jirl ships
    proc = _jirl(installed, "convert", "dirl", "--encoder", str(encoder), "--decoder", str(decoder),
                 "--output", str(tmp_path / "converted"), "--config", "configs/dirl.py", *TINY)
    assert "wrote" in proc.stdout
    _jirl(installed, "eval", "--checkpoint", str(tmp_path / "converted"), "--config", "dirl:quick",
          *TINY, *DATA, *data, "--output", str(tmp_path / "converted_eval"))
    converted = json.loads((tmp_path / "converted_eval" / "eval.json").read_text())
    for k in ("ap", "f1", "iou"):  # the same weights score the same
        assert abs(converted["results"]["mask"]["all"][k] - scores[k]) < 1e-6, k
    assert os.listdir(work) == []  # nothing written into the working directory

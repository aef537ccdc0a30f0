"""train / eval as a user runs them (python train.py in the clone, the `jirl` command anywhere):
flags, config names and files, overrides, where outputs go, error messages."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--config.model.stem_features=4", "--config.model.stage_features=(4,4,8,8,8)",
    "--config.model.ggd_ch=4", "--config.data.image_size=40", "--config.data.crop_size=32",
    "--config.data.num_train=16", "--config.data.num_test=8", "--config.batch_size=4",
    "--config.num_train_steps=3", "--config.eval_every_steps=3", "--config.eval.batch_size=4",
]


def _run(script, *args):
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    common = ["--config", "configs/dirl.py:quick", "--workdir", str(root / "run"),
              f"--config.data.data_dir={root / 'data'}", *TINY]
    proc = _run("train.py", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, common, proc


def test_train_applies_command_line_overrides(trained):
    root, _, proc = trained
    with open(root / "run" / "config.json") as f:
        config = json.load(f)
    assert config["model"]["stage_features"] == [4, 4, 8, 8, 8]
    assert config["batch_size"] == 4 and config["num_train_steps"] == 3
    assert os.listdir(root / "run" / "checkpoints") == ["3"]
    assert "IoU" in proc.stdout


def test_eval_prints_metrics_writes_json_and_masks(trained):
    root, common, _ = trained
    proc = _run("eval.py", *common, "--save_outputs", "--contact_sheet=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "AP" in proc.stdout and "synthetic" in proc.stdout
    with open(root / "run" / "eval.json") as f:
        result = json.load(f)
    scores = result["results"]["mask"]["all"]
    assert scores["count"] == 8 and set(scores) >= {"ap", "f1", "iou"}
    assert len(os.listdir(root / "run" / "masks" / "mask")) == 8  # masks of the model only
    # The trivial baselines beside the model, in eval.json and the printed table.
    for name in ("baseline/mean_mask", "baseline/all_foreground"):
        assert result["results"][name]["all"]["count"] == 8
        assert name in proc.stdout
    fg = result["results"]["baseline/all_foreground"]["all"]
    assert fg["iou"] == pytest.approx(fg["ap"], abs=1e-6) and 0.05 <= fg["iou"] <= 0.5
    assert result["mean_mask"]["examples"] == 14  # 16 prepared, 2 held out as "val"
    # The contact sheet: 3 rows of composite | ground truth | prediction, 32 px enlarged 4x to
    # 128 px tiles, 2 px gaps.
    sheet = np.asarray(Image.open(root / "run" / "contact_sheet.png"))
    assert sheet.shape == (3 * 130 + 2, 3 * 130 + 2, 3)
    # Every ground-truth tile (middle column) is a region >= 0.25 sides away from the centre.
    for row in range(3):
        y = 2 + row * 130
        truth = sheet[y:y + 128, 132:260, 0] > 127
        assert _offset(truth) >= 0.25, row


def _offset(mask: np.ndarray) -> float:
    """Distance of a mask's centre of mass from the image centre, in image sides (reference)."""
    ys, xs = np.nonzero(mask)
    return float(np.hypot((ys.mean() + 0.5) / mask.shape[0] - 0.5,
                          (xs.mean() + 0.5) / mask.shape[1] - 0.5))


def test_eval_of_a_checkpoint_path(trained):
    root, common, _ = trained
    proc = _run("eval.py", *common, "--checkpoint", str(root / "run" / "checkpoints" / "3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(root / "run" / "checkpoints" / "3") in proc.stdout


JIRL = os.path.join(os.path.dirname(sys.executable), "jirl")  # the console script


def _jirl(*args, cwd):
    return subprocess.run([JIRL, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_eval_of_a_checkpoint_alone_uses_its_stored_config_and_writes_beside_it(trained, tmp_path):
    """`jirl eval --checkpoint X` from another directory: the config comes from the checkpoint's
    meta (its tiny widths and data), eval.json goes to X's workdir, or to --output."""
    root, _, _ = trained
    step = root / "run" / "checkpoints" / "3"
    proc = _jirl("eval", "--checkpoint", str(step), "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert result["checkpoint"] == str(step) and result["results"]["mask"]["all"]["count"] == 8
    assert sorted(os.listdir(tmp_path)) == ["out"]  # nothing written in the working directory
    stamp = os.path.getmtime(root / "run" / "eval.json") if (root / "run" / "eval.json").exists() else 0
    proc = _jirl("eval", "--checkpoint", str(step), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    beside = json.loads((root / "run" / "eval.json").read_text())
    assert os.path.getmtime(root / "run" / "eval.json") > stamp
    assert beside["results"] == result["results"]
    assert f"results: {root / 'run' / 'eval.json'}" in proc.stdout
    # the shorthands reach the stored config: another batch, the raw probabilities
    proc = _jirl("eval", "--checkpoint", str(step), "--output", str(tmp_path / "raw"),
                 "--batch_size", "2", "--nonormalize", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw = json.loads((tmp_path / "raw" / "eval.json").read_text())
    assert raw["normalized"] is False and raw["results"]["mask"]["all"]["count"] == 8


def test_a_shorthand_that_contradicts_its_config_override_is_refused(tmp_path):
    proc = _jirl("train", "--config", "dirl:quick", "--batch_size", "4", "--config.batch_size=8",
                 cwd=tmp_path)
    assert proc.returncode != 0 and "--batch_size=4 contradicts --config.batch_size=8" in proc.stderr


def test_eval_needs_a_checkpoint_or_a_config(tmp_path):
    proc = _jirl("eval", cwd=tmp_path)
    assert proc.returncode != 0 and "pass --checkpoint" in proc.stderr
    proc = _jirl("eval", "--checkpoint", str(tmp_path), cwd=tmp_path)
    assert proc.returncode != 0 and "eval: no checkpoint found in" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_jirl_command_lists_its_commands_and_their_flags(tmp_path):
    proc = _jirl(cwd=tmp_path)
    assert proc.returncode == 2 and "usage: jirl <command>" in proc.stdout
    for command in ("train", "eval", "predict", "convert", "demo", "ablation"):
        assert f"  {command} " in proc.stdout
    proc = _jirl("nope", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown command 'nope'" in proc.stderr
    proc = _jirl("train", "--help", cwd=tmp_path)
    assert "jirl train" in proc.stdout  # (absl exits 1 after --help)
    assert "--config" in proc.stdout and "--workdir" in proc.stdout
    proc = _jirl("train", "--config", "nope:quick", cwd=tmp_path)
    assert proc.returncode != 0 and "no config file 'nope'" in proc.stderr
    assert "dirl, madisnet, rainnet, rsrnet, unet" in proc.stderr


def test_unknown_config_key_fails_clearly():
    proc = _run("train.py", "--config", "configs/dirl.py:quick", "--config.no_such_key=1")
    assert proc.returncode != 0
    assert "no_such_key" in proc.stderr


def test_eval_without_a_checkpoint_fails_clearly(tmp_path):
    proc = _run("eval.py", "--config", "configs/dirl.py:quick", "--workdir", str(tmp_path))
    assert proc.returncode != 0
    assert "no checkpoint found" in proc.stderr


def test_a_paper_recipe_warns_and_a_variant_list_names_the_default_workdir(tmp_path):
    """rsrnet:full,row1 (a shipped config by name, from a directory outside the checkout) is the
    paper's recipe (Table 2's UNet): without ImageNet weights or iHarmony4 `jirl train` warns,
    and trains into runs/rsrnet_full_row1 under the working directory."""
    tiny = ["--config.model.stem_features=4", "--config.model.stage_features=(4,4,8,8,8)",
            "--config.model.stage_blocks=(1,1,1,1,1)", "--config.data.image_size=40",
            "--config.data.crop_size=32", "--config.data.num_train=16", "--config.data.num_test=8",
            "--config.batch_size=4", "--config.num_train_steps=1", "--config.eval_every_steps=1",
            "--config.eval.batch_size=4", f"--config.data.data_dir={tmp_path / 'data'}"]
    proc = _jirl("train", "--config", "rsrnet:full,row1", *tiny, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train: the paper unet recipe starts from ImageNet resnet34 weights" in proc.stderr
    assert "--config.data.source=ihd" in proc.stderr
    assert os.listdir(tmp_path / "runs" / "rsrnet_full_row1" / "checkpoints") == ["1"]

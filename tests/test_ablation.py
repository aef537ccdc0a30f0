"""python -m jirl.ablation: variants trained and evaluated by train.py / eval.py, then tabulated."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jirl import ablation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scores(ap, f1, iou, count=8):
    return {"all": {"ap": ap, "f1": f1, "iou": iou, "count": count}}


FAKE = {
    "row2": {"model": "rsrnet", "wall_seconds": 90.0,
             "results": {"M^1": _scores(0.1, 0.2, 0.3), "M^2": _scores(0.4, 0.5, 0.6),
                         "M_dec": _scores(0.71, 0.52, 0.43), "M_fnl": _scores(0.81, 0.62, 0.53),
                         "M_rsr": _scores(0.61, 0.42, 0.33), "baseline/mean_mask": _scores(0.2, 0.25, 0.15)}},
    "row1": {"model": "unet", "wall_seconds": 30.0,
             "results": {"mask": _scores(0.5, 0.4, 0.3), "baseline/mean_mask": _scores(0.2, 0.25, 0.15)}},
}


def test_tables_list_every_mask_and_the_iterations_apart():
    text = ablation.table(FAKE).splitlines()
    assert text[0].split(" | ")[2:5] == ["M_dec AP", "M_dec F1", "M_dec IoU"]
    assert "M^1" not in text[0]
    row2 = [c.strip() for c in text[2].strip("|").split("|")]
    assert row2[:5] == ["row2", "rsrnet", "0.7100", "0.5200", "0.4300"] and row2[-1] == "1.5"
    row1 = [c.strip() for c in text[3].strip("|").split("|")]
    header = [c.strip() for c in text[0].strip("|").split("|")]
    assert row1[header.index("mask IoU")] == "0.3000" and row1[header.index("M_fnl AP")] == ""
    steps = ablation.iteration_table(FAKE).splitlines()
    assert steps[0] == "| variant | metric | k=1 | k=2 |"
    assert steps[2:] == ["| row2 | AP | 0.1000 | 0.4000 |", "| row2 | F1 | 0.2000 | 0.5000 |",
                         "| row2 | IoU | 0.3000 | 0.6000 |"]
    assert ablation.primary_mask(FAKE["row2"]) == "M_fnl"


def test_bar_chart_draws_the_primary_masks(tmp_path):
    path = str(tmp_path / "chart.png")
    assert ablation.bar_chart(FAKE, path)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape[0] == 350 and image.shape[1] > 300
    assert not os.path.exists(path + ".tmp.png")


def _write_jsonl(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def test_harmonizers_get_per_epoch_scores_a_leader_per_epoch_and_two_curve_panels(tmp_path):
    """metrics.jsonl's validation records become per-epoch rows (epochs from the training
    records' step / epoch), the leader by PSNR per epoch, and curves.png has MSE and PSNR."""
    for variant, psnr in (("quick_in", (20.0, 22.0, 25.0)), ("quick", (21.0, 21.5, 26.0))):
        records = [{"step": 5, "loss": 1.0, "epoch": 0.5}]
        for epoch, p in enumerate(psnr, 1):
            records += [{"step": 10 * epoch, "loss": 1.0, "epoch": float(epoch)},
                        {"step": 10 * epoch, "test/mse": 100.0 / epoch, "test/psnr": p,
                         "test/fmse": 300.0 / epoch, "test/fg_ratio": 0.1}]
        _write_jsonl(tmp_path / variant / "metrics.jsonl", records)
    curves = {v: ablation.epoch_scores(str(tmp_path / v)) for v in ("quick_in", "quick")}
    assert sorted(curves["quick"]) == [1.0, 2.0, 3.0]
    assert curves["quick"][2.0] == {"mse": 50.0, "psnr": 21.5, "fmse": 150.0}
    rows = ablation.epoch_table(curves, ablation.TASK_METRICS["harmonization"], "psnr").splitlines()
    assert rows[0].startswith("| epoch | quick_in MSE | quick MSE | quick_in PSNR | quick PSNR")
    assert [r.split(" | ")[-1].rstrip(" |") for r in rows[2:]] == ["quick", "quick_in", "quick"]
    path = str(tmp_path / "curves.png")
    assert ablation.curve_chart(curves, ablation.CURVE_PANELS["harmonization"], path)
    assert np.asarray(Image.open(path)).shape[:2] == (350, 900)
    fake = {v: {"model": "rainnet", "task": "harmonization", "results": {"harmonized": {"all": {
        "mse": 40.0, "psnr": 36.0, "fmse": 400.0, "fg_ratio": 0.1, "count": 8}}}} for v in curves}
    assert ablation.table(fake).splitlines()[0].split(" | ")[2:5] == [
        "harmonized MSE", "harmonized PSNR", "harmonized fMSE"]
    assert ablation.bar_chart(fake, str(tmp_path / "chart.png"))


def test_ablation_trains_evaluates_resumes_and_tabulates(tmp_path):
    workdir = tmp_path / "ablation"
    tiny = ["--config.model.stem_features=4", "--config.model.stage_features=(4,4,8,8,8)",
            "--config.data.num_train=16", "--config.data.num_test=8", "--config.batch_size=4",
            "--config.num_train_steps=1", "--config.eval_every_steps=1", "--config.eval.batch_size=4",
            f"--config.data.data_dir={tmp_path / 'data'}"]
    command = [sys.executable, "-m", "jirl.ablation", "--config", "configs/rsrnet.py:quick",
               "--variants", "row2,row1", "--workdir", str(workdir), "--", *tiny]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "table.json").read_text())
    assert list(results) == ["row2", "row1"]
    assert results["row1"]["model"] == "unet" and results["row2"]["model"] == "rsrnet"
    # row 2 is RSRNet without a combination (its M_fnl is M_dec), scored per iteration too
    with open(workdir / "row2" / "config.json") as f:
        assert json.load(f)["model"]["combine"] == "none"
    r2 = results["row2"]["results"]
    assert r2["M_fnl"] == r2["M_dec"] and {f"M^{k}" for k in range(1, 13)} <= set(r2)
    assert results["row2"]["wall_seconds"] > 0
    assert "| row2 | rsrnet |" in proc.stdout and "k=12" in proc.stdout
    assert (workdir / "table.md").read_text() in proc.stdout
    assert (workdir / "chart.png").exists()
    # a second run finds both variants evaluated and trains nothing
    stamp = os.path.getmtime(workdir / "row1" / "eval.json")
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and os.path.getmtime(workdir / "row1" / "eval.json") == stamp
    assert "resumed" not in again.stderr and "| row1 | unet |" in again.stdout


def test_bad_arguments_are_reported():
    with pytest.raises(SystemExit, match="no config file"):
        ablation.main(["--config", os.path.join(ROOT, "configs", "nope.py:quick")])
    with pytest.raises(SystemExit, match="defines no ROWS"):
        ablation.main(["--config", os.path.join(ROOT, "configs", "dirl.py:quick")])

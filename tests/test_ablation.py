"""jirl ablation: variants trained and scored in one process (train_and_evaluate,
evaluate_checkpoint), from any directory, then tabulated."""

import json
import os

import numpy as np
import pytest
from jirl_testing import ROOT, run, subprocess_env
from PIL import Image

from jirl import ablation
from jirl.tasks import HARMONIZATION


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
    assert os.listdir(tmp_path) == ["chart.png"]  # no temporary file left


def _write_jsonl(path, records):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def test_harmonizers_get_per_epoch_scores_a_leader_per_epoch_and_two_curve_panels(tmp_path):
    """metrics.jsonl's validation records become per-epoch rows (epochs from the training
    records' step / epoch), the leader by PSNR per epoch, and curves.png has MSE and PSNR."""
    for variant, psnr in (("in", (20.0, 22.0, 25.0)), ("rain", (21.0, 21.5, 26.0))):
        records = [{"step": 5, "loss": 1.0, "epoch": 0.5}]
        for epoch, p in enumerate(psnr, 1):
            records += [{"step": 10 * epoch, "loss": 1.0, "epoch": float(epoch)},
                        {"step": 10 * epoch, "test/mse": 100.0 / epoch, "test/psnr": p,
                         "test/fmse": 300.0 / epoch, "test/fg_ratio": 0.1}]
        _write_jsonl(tmp_path / variant / "metrics.jsonl", records)
    curves = {v: ablation.epoch_scores(str(tmp_path / v)) for v in ("in", "rain")}
    assert sorted(curves["rain"]) == [1.0, 2.0, 3.0]
    assert curves["rain"][2.0] == {"mse": 50.0, "psnr": 21.5, "fmse": 150.0}
    rows = ablation.epoch_table(curves, HARMONIZATION).splitlines()
    assert rows[0].startswith("| epoch | in MSE | rain MSE | in PSNR | rain PSNR")
    assert [r.split(" | ")[-1].rstrip(" |") for r in rows[2:]] == ["rain", "in", "rain"]
    path = str(tmp_path / "curves.png")
    assert ablation.curve_chart(curves, HARMONIZATION, path)
    assert np.asarray(Image.open(path)).shape[:2] == (350, 900)
    fake = {v: {"model": "rainnet", "task": "harmonization", "results": {"harmonized": {"all": {
        "mse": 40.0, "psnr": 36.0, "fmse": 400.0, "fg_ratio": 0.1, "count": 8}}}} for v in curves}
    assert ablation.table(fake).splitlines()[0].split(" | ")[2:5] == [
        "harmonized MSE", "harmonized PSNR", "harmonized fMSE"]
    assert ablation.bar_chart(fake, str(tmp_path / "chart.png"))
    with pytest.raises(ValueError, match="the variants mix tasks"):
        ablation.task_of({**fake, **FAKE})


def test_arms_and_overrides():
    """Each arm is FILE:<base>,<variant> of the shipped config; overrides reach every arm and
    a key an arm lacks is named."""
    arms = ablation.arms("rsrnet:quick")
    assert list(arms) == [f"row{i}" for i in range(1, 10)]
    assert arms["row2"].endswith("rsrnet.py:quick,row2") and os.path.isabs(arms["row2"])
    assert list(ablation.arms("rainnet:quick")) == ["in", "rain"]
    row1 = ablation.arm_config(arms["row1"], {"model.stem_features": 4, "seed": 3})
    assert (row1.model.name, row1.model.stem_features, row1.seed) == ("unet", 4, 3)
    with pytest.raises(ValueError, match=r"--config.model.ggd_ch: the variant .*row1 has no such key"):
        ablation.arm_config(arms["row1"], {"model.ggd_ch": 4})
    with pytest.raises(ValueError, match="defines no ROWS"):
        ablation.arms("dirl:quick")
    with pytest.raises(ValueError, match="no config file 'nope.py'"):
        ablation.arms("nope.py:quick")


def test_ablation_trains_and_scores_in_process_from_outside_the_checkout_and_resumes(tmp_path):
    """`python -m jirl.ablation` in an empty directory (the checkout not on the path): both
    variants trained and scored in one process, the tables written; a rerun trains nothing."""
    workdir = tmp_path / "ablation"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    tiny = ["--config.model.stem_features=4", "--config.model.stage_features=(4,4,8,8,8)",
            "--config.data.num_train=16", "--config.data.num_test=8", "--config.batch_size=4",
            "--config.num_train_steps=1", "--config.eval_every_steps=1", "--config.eval.batch_size=4",
            f"--config.data.data_dir={tmp_path / 'data'}"]
    command = ["-m", "jirl.ablation", "--config", "rsrnet:quick", "--variants", "row2,row1",
               "--workdir", str(workdir), *tiny]
    env = subprocess_env(1, checkout=False)
    proc = run(command, env, timeout=900, cwd=str(outside))
    assert proc.stderr.count("resumed from") == 0
    results = json.loads((workdir / "table.json").read_text())
    assert list(results) == ["row2", "row1"]
    assert results["row1"]["model"] == "unet" and results["row2"]["model"] == "rsrnet"
    # row 2 is RSRNet without a combination (its M_fnl is M_dec), scored per iteration too
    with open(workdir / "row2" / "config.json") as f:
        assert json.load(f)["model"]["combine"] == "none"
    r2 = results["row2"]["results"]
    assert r2["M_fnl"] == r2["M_dec"] and {f"M^{k}" for k in range(1, 13)} <= set(r2)
    assert results["row2"]["wall_seconds"] > 0 and results["row2"]["split"] == "test"
    assert "| row2 | rsrnet |" in proc.stdout and "k=12" in proc.stdout
    assert (workdir / "table.md").read_text() in proc.stdout
    assert (workdir / "chart.png").exists() and os.listdir(outside) == []
    # a second run finds both variants scored and trains nothing
    stamp = os.path.getmtime(workdir / "row1" / "eval.json")
    again = run(command, env, timeout=300, cwd=str(outside))
    assert os.path.getmtime(workdir / "row1" / "eval.json") == stamp
    assert "resumed" not in again.stderr and "| row1 | unet |" in again.stdout


def test_bad_arguments_are_one_line_errors(tmp_path):
    env = subprocess_env(1)
    for args, message in ((["--config", "nope:quick"], "no config file 'nope'"),
                          (["--config", os.path.join(ROOT, "configs", "dirl.py:quick")],
                           "defines no ROWS")):
        proc = run(["-m", "jirl.ablation", *args, "--workdir", str(tmp_path)], env, check=False,
                   cwd=str(tmp_path))
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr

"""jirl ablation: variants trained and scored in one process (train_and_evaluate,
evaluate_checkpoint), from any directory, then tabulated."""

import json
import os

import numpy as np
import pytest
from jirl_testing import ROOT, run, subprocess_env
from PIL import Image

from jirl import ablation
from jirl.runtime import configs
from jirl.tasks import HARMONIZATION


def _scores(ap, f1, iou, count=8):
    return {"all": {"ap": ap, "f1": f1, "iou": iou, "count": count}}


FAKE = {  # {variant: {seed: eval.json}}, one seed each
    "row2": {0: {"model": "rsrnet", "wall_seconds": 90.0,
                 "results": {"M^1": _scores(0.1, 0.2, 0.3), "M^2": _scores(0.4, 0.5, 0.6),
                             "M_dec": _scores(0.71, 0.52, 0.43), "M_fnl": _scores(0.81, 0.62, 0.53),
                             "M_rsr": _scores(0.61, 0.42, 0.33),
                             "baseline/mean_mask": _scores(0.2, 0.25, 0.15)}}},
    "row1": {0: {"model": "unet", "wall_seconds": 30.0,
                 "results": {"mask": _scores(0.5, 0.4, 0.3),
                             "baseline/mean_mask": _scores(0.2, 0.25, 0.15)}}},
}


def test_tables_list_every_mask_and_the_iterations_apart():
    text = ablation.table(FAKE).splitlines()
    assert text[0].split(" | ")[3:6] == ["M_dec AP", "M_dec F1", "M_dec IoU"]
    assert "M^1" not in text[0]
    row2 = [c.strip() for c in text[2].strip("|").split("|")]
    assert row2[:6] == ["row2", "rsrnet", "1", "0.7100", "0.5200", "0.4300"] and row2[-1] == "1.5"
    row1 = [c.strip() for c in text[3].strip("|").split("|")]
    header = [c.strip() for c in text[0].strip("|").split("|")]
    assert row1[header.index("mask IoU")] == "0.3000" and row1[header.index("M_fnl AP")] == ""
    steps = ablation.iteration_table(FAKE).splitlines()
    assert steps[0] == "| variant | metric | k=1 | k=2 |"
    assert steps[2:] == ["| row2 | AP | 0.1000 | 0.4000 |", "| row2 | F1 | 0.2000 | 0.5000 |",
                         "| row2 | IoU | 0.3000 | 0.6000 |"]
    assert ablation.primary_mask(FAKE["row2"][0]) == "M_fnl"
    assert ablation.interval_table(FAKE, "row1") == ""  # one seed: no intervals


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
    curves = {v: {0: ablation.epoch_scores(str(tmp_path / v))} for v in ("in", "rain")}
    assert sorted(curves["rain"][0]) == [1.0, 2.0, 3.0]
    assert curves["rain"][0][2.0] == {"mse": 50.0, "psnr": 21.5, "fmse": 150.0}
    rows = ablation.epoch_table(curves, HARMONIZATION).splitlines()
    assert rows[0].startswith("| epoch | in MSE | rain MSE | in PSNR | rain PSNR")
    assert [r.split(" | ")[-1].rstrip(" |") for r in rows[2:]] == ["rain", "in", "rain"]
    path = str(tmp_path / "curves.png")
    assert ablation.curve_chart(curves, HARMONIZATION, path)
    assert np.asarray(Image.open(path)).shape[:2] == (350, 900)
    fake = {v: {0: {"model": "rainnet", "task": "harmonization", "results": {"harmonized": {
        "all": {"mse": 40.0, "psnr": 36.0, "fmse": 400.0, "fg_ratio": 0.1, "count": 8}}}}}
        for v in curves}
    assert ablation.table(fake).splitlines()[0].split(" | ")[3:6] == [
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
    assert list(ablation.arms("madisnet:quick")) == ["ddm", "noddm"]
    assert ablation.reference_arm("madisnet:quick", ["ddm", "noddm"]) == "noddm"
    ddm = ablation.arm_config(ablation.arms("madisnet:quick")["ddm"])
    assert ddm.to_dict() == configs.load("madisnet:quick").to_dict()
    assert not ablation.arm_config(ablation.arms("madisnet:quick")["noddm"]).model.domain_encoder
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
    report = json.loads((workdir / "table.json").read_text())
    assert list(report["arms"]) == ["row2", "row1"] and report["reference"] == "row2"
    assert all(len(arm["seeds"]) == 1 for arm in report["arms"].values())  # config.seed only
    results = {v: next(iter(arm["seeds"].values())) for v, arm in report["arms"].items()}
    assert results["row1"]["model"] == "unet" and results["row2"]["model"] == "rsrnet"
    # row 2 is RSRNet without a combination (its M_fnl is M_dec), scored per iteration too
    with open(workdir / "row2" / "config.json") as f:
        assert json.load(f)["model"]["combine"] == "none"
    r2 = results["row2"]["results"]
    assert r2["M_fnl"] == r2["M_dec"] and {f"M^{k}" for k in range(1, 13)} <= set(r2)
    assert results["row2"]["wall_seconds"] > 0 and results["row2"]["split"] == "test"
    assert "| row2 | rsrnet | 1 |" in proc.stdout and "k=12" in proc.stdout
    assert (workdir / "table.md").read_text() in proc.stdout
    assert (workdir / "chart.png").exists() and os.listdir(outside) == []
    # a second run, the same variants named as whole configs (--arm), finds both scored and
    # trains nothing (a run with its eval.json is done, whatever names it)
    stamp = os.path.getmtime(workdir / "row1" / "eval.json")
    arms = ["--arm", "row1=rsrnet:quick,row1", "--arm", "row2=rsrnet:quick,row2"]
    again = run(["-m", "jirl.ablation", *arms, "--workdir", str(workdir)], env, timeout=300,
                cwd=str(outside))
    assert os.path.getmtime(workdir / "row1" / "eval.json") == stamp
    assert "resumed" not in again.stderr and "| row1 | unet | 1 |" in again.stdout
    assert json.loads((workdir / "table.json").read_text())["reference"] == "row1"
    assert "(2 variants, 2 runs)" in again.stdout


def test_bad_arguments_are_one_line_errors(tmp_path):
    env = subprocess_env(1)
    for args, message in ((["--config", "nope:quick"], "no config file 'nope'"),
                          (["--config", os.path.join(ROOT, "configs", "dirl.py:quick")],
                           "defines no ROWS")):
        proc = run(["-m", "jirl.ablation", *args, "--workdir", str(tmp_path)], env, check=False,
                   cwd=str(tmp_path))
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- several seeds: the statistics

# Five seeds of two arms whose scores move together with the seed (a seed effect of +-0.05
# shared by both arms) around a small real difference of +0.01: paired, the difference is
# clear; unpaired, the seed effect hides it.
SEEDS = (0, 1, 2, 3, 4)
REF = dict(zip(SEEDS, (0.50, 0.55, 0.45, 0.60, 0.40), strict=True))
ARM = dict(zip(SEEDS, (0.512, 0.559, 0.461, 0.608, 0.413), strict=True))


def test_intervals_and_paired_differences_match_scipy_and_the_t_table():
    from scipy import stats as scipy_stats

    from jirl.ablation import stats

    iv = stats.interval(list(REF.values()))
    low, high = scipy_stats.ttest_1samp(list(REF.values()), 0.0).confidence_interval(0.95)
    assert iv["n"] == 5 and abs(iv["mean"] - 0.5) < 1e-12
    assert abs(iv["std"] - np.std(list(REF.values()), ddof=1)) < 1e-12
    assert abs(iv["low"] - low) < 1e-12 and abs(iv["high"] - high) < 1e-12
    # the t table: t(0.975, 4 degrees of freedom) = 2.776445
    assert abs((iv["high"] - iv["mean"]) / (iv["std"] / np.sqrt(5)) - 2.776445105) < 1e-8

    d = stats.paired_difference(ARM, REF, lower_is_better=False)
    arm, ref = [ARM[s] for s in SEEDS], [REF[s] for s in SEEDS]
    low, high = scipy_stats.ttest_rel(arm, ref).confidence_interval(0.95)
    assert d["seeds"] == list(SEEDS) and abs(d["mean"] - 0.0106) < 1e-12
    assert abs(d["low"] - low) < 1e-12 and abs(d["high"] - high) < 1e-12
    assert d["low"] > 0 and d["verdict"] == "better"
    # unpaired, the same numbers show no difference: pairing is what measures it
    welch = scipy_stats.ttest_ind(arm, ref, equal_var=False).confidence_interval(0.95)
    assert welch.low < 0 < welch.high
    # the direction follows the metric; an interval over zero is no verdict
    assert stats.paired_difference(ARM, REF, lower_is_better=True)["verdict"] == "worse"
    assert stats.verdict(-0.1, 0.2, False) == stats.NO_DIFFERENCE == "no difference measured"
    assert stats.verdict(-0.3, -0.1, True) == "better"
    # only the seeds both arms ran are paired; one value has no interval
    assert stats.paired_difference({**ARM, 9: 1.0}, REF, False)["seeds"] == list(SEEDS)
    assert stats.interval([0.3])["low"] is None
    with pytest.raises(ValueError, match="share no seed"):
        stats.paired_difference({7: 0.1}, REF, False)


def test_the_last_iteration_is_paired_with_the_first_over_seeds(tmp_path):
    """An iterative model over 3 seeds: table.md and table.json give M^k − M^1 per seed (the
    same run), with scipy's paired t interval and a verdict; iterations.png draws M^k over k."""
    from scipy import stats as scipy_stats

    from jirl.ablation import report

    first, last = {0: 0.30, 1: 0.34, 2: 0.31}, {0: 0.32, 1: 0.35, 2: 0.34}
    results = {"row9": {s: {"model": "rsrnet", "wall_seconds": 60.0, "results": {
        "M^1": _scores(0.5, 0.4, first[s]), "M^2": _scores(0.5, 0.4, 0.5 * (first[s] + last[s])),
        "M^3": _scores(0.5, 0.4, last[s]), "M_fnl": _scores(0.6, 0.5, 0.4)}} for s in first}}
    low, high = scipy_stats.ttest_rel(list(last.values()), list(first.values())).confidence_interval()
    d = report.iteration_paired(results)["row9"]["iou"]["M^3"]
    assert d["n"] == 3 and abs(d["low"] - low) < 1e-12 and abs(d["high"] - high) < 1e-12
    assert d["verdict"] == ("better" if low > 0 else "no difference measured")
    assert list(report.iteration_paired(results)["row9"]["iou"]) == ["M^2", "M^3"]
    assert report.iteration_paired(results)["row9"]["ap"]["M^3"]["verdict"] == "no difference measured"
    markdown = report.write_report(results, {"row9": {s: {} for s in first}}, str(tmp_path), "row9")
    row = f"| row9 | IoU | M^3: {d['mean']:+.4f} | [{low:.4f}, {high:.4f}] | 3 | {d['verdict']} |"
    assert row in markdown
    saved = json.loads((tmp_path / "table.json").read_text())
    assert saved["arms"]["row9"]["per_iteration_paired"]["iou"]["M^2"]["seeds"] == [0, 1, 2]
    assert np.asarray(Image.open(tmp_path / "iterations.png")).shape[:2] == (350, 1350)
    one_seed = {"row9": {0: results["row9"][0]}}
    assert report.iteration_paired(one_seed) == {} and report.iteration_gain_table(one_seed) == ""


def _harmonizer_run(mse, psnr, small_mse=None):
    """An eval.json of 8 images; with `small_mse`, 5 of them in the 5-15 % foreground bin and 3
    in the 15-100 % one (and a "synthetic" subset of all 8, which splits nothing)."""
    def row(m, n):
        return {"mse": m, "psnr": psnr, "fmse": 10 * m, "fg_ratio": 0.1, "count": n}

    rows = {"all": row(mse, 8)}
    if small_mse is not None:
        rows.update({"synthetic": row(mse, 8), "fg 5-15%": row(small_mse, 5),
                     "fg 15-100%": row((8 * mse - 5 * small_mse) / 3, 3)})
    return {"model": "rainnet", "task": "harmonization", "wall_seconds": 60.0,
            "results": {"harmonized": rows}}


def test_report_over_seeds_has_intervals_paired_verdicts_per_epoch_and_band_charts(tmp_path):
    """Three seeds per arm: table.md gives mean ± std, the 95 % intervals and RAIN's paired
    difference from IN with a verdict, overall and per epoch, and says from which epoch the
    verdict holds; table.json carries the same; the charts are drawn."""
    from jirl.ablation import report, stats

    seeds = (0, 1, 2)
    # RAIN: lower MSE overall, higher on the small foregrounds, so lower on the large ones
    results = {"in": {s: _harmonizer_run(100.0 + 10 * s, 30.0 + s, 50.0 + s) for s in seeds},
               "rain": {s: _harmonizer_run(90.0 + 10 * s + s * s, 30.0 + s, 55.0 + 1.2 * s)
                        for s in seeds}}
    # per epoch: RAIN's MSE ties IN's at epoch 1 (+-1), then is 5 below at every seed
    curves = {"in": {s: {float(e): {"mse": 100.0 - 10 * e + s, "psnr": 30.0 + e + 0.1 * s,
                                    "fmse": 500.0} for e in (1, 2, 3)} for s in seeds},
              "rain": {s: {float(e): {"mse": 100.0 - 10 * e + s + (
                  (-1.0, 1.0, 0.0)[s] if e == 1 else -5.0 - 0.1 * s),
                  "psnr": 30.0 + e + 0.1 * s, "fmse": 500.0} for e in (1, 2, 3)} for s in seeds}}
    markdown = report.write_report(results, curves, str(tmp_path), "in")
    rows = {line.split(" | ")[0].lstrip("| ") + "/" + line.split(" | ")[1]: line
            for line in report.interval_table(results, "in").splitlines()[2:]}
    expected = stats.paired_difference({s: 90.0 + 10 * s + s * s for s in seeds},
                                       {s: 100.0 + 10 * s for s in seeds}, True)
    assert f"{expected['mean']:+.4f}" in rows["rain/MSE"] and "(reference)" in rows["in/MSE"]
    assert rows["rain/MSE"].rstrip(" |").endswith(expected["verdict"])
    assert "| in | rainnet | 3 | 110.0000 ± 10.0000" in markdown
    split = {(line.split(" | ")[0].lstrip("| "), line.split(" | ")[3]): line
             for line in report.subset_table(results, "in").splitlines()[2:]}
    assert {subset for subset, _ in split} == {"fg 5-15%", "fg 15-100%"}  # not "synthetic"
    small = stats.paired_difference({s: 55.0 + 1.2 * s for s in seeds},
                                    {s: 50.0 + s for s in seeds}, True)
    large = stats.paired_difference(
        {s: (8 * (90.0 + 10 * s + s * s) - 5 * (55.0 + 1.2 * s)) / 3 for s in seeds},
        {s: (8 * (100.0 + 10 * s) - 5 * (50.0 + s)) / 3 for s in seeds}, True)
    assert (small["verdict"], large["verdict"]) == ("worse", "better")
    for key, d in ((("fg 5-15%", "MSE"), small), (("fg 15-100%", "MSE"), large)):
        assert f"| {d['mean']:+.4f} | [{d['low']:.4f}, {d['high']:.4f}] | {d['verdict']} |" in split[key]
    assert "By subset of the split" in markdown and "| fg 5-15% | 5 | rain | MSE |" in markdown
    lines = report.verdict_lines(curves, HARMONIZATION, "in")
    assert "rain vs in, MSE: better from epoch 2 on" in lines
    assert "rain vs in, PSNR: no difference measured at the last epoch (3)" in lines
    assert "- rain vs in, MSE: better from epoch 2 on" in markdown
    epoch_rows = report.epoch_table(curves, HARMONIZATION, "in").splitlines()
    assert "rain − in MSE" in epoch_rows[0]
    assert "no difference measured" in epoch_rows[2] and "better" in epoch_rows[3]
    saved = json.loads((tmp_path / "table.json").read_text())
    assert saved["reference"] == "in" and saved["confidence"] == 0.95
    assert saved["arms"]["rain"]["paired"]["mse"]["verdict"] == expected["verdict"]
    assert saved["arms"]["rain"]["per_epoch_paired"]["mse"]["2"]["verdict"] == "better"
    assert saved["arms"]["in"]["summary"]["harmonized"]["mse"]["n"] == 3
    assert saved["arms"]["rain"]["paired_by_subset"]["fg 15-100%"]["mse"]["mean"] == pytest.approx(
        large["mean"], rel=1e-12)
    for chart in ("chart.png", "curves.png"):
        assert np.asarray(Image.open(tmp_path / chart)).shape[0] == 350
    assert not (tmp_path / "iterations.png").exists()  # no model here iterates


def test_seeds_run_each_arm_per_seed_into_its_own_folder(tmp_path, monkeypatch):
    """run_ablation with seeds trains (arm, seed) into <workdir>/<arm>/seed<k> with
    config.seed = k, and pairs the arms against the config's REFERENCE."""
    calls = []

    def fake_run_arm(config, workdir):
        calls.append((os.path.relpath(workdir, tmp_path), int(config.seed), config.model.norm))
        return _harmonizer_run(50.0 + config.seed, 30.0)

    monkeypatch.setattr(ablation, "run_arm", fake_run_arm)
    results = ablation.run_ablation("rainnet:quick", workdir=str(tmp_path), seeds=[3, 5])
    assert calls == [("in/seed3", 3, "in"), ("in/seed5", 5, "in"),
                     ("rain/seed3", 3, "rain"), ("rain/seed5", 5, "rain")]
    assert {v: sorted(r) for v, r in results.items()} == {"in": [3, 5], "rain": [3, 5]}
    assert json.loads((tmp_path / "table.json").read_text())["reference"] == "in"
    calls.clear()
    named = ablation.named_arms(["rainnet:quick,rain", "plain=rainnet:quick,in"])
    assert list(named) == ["rainnet_quick_rain", "plain"]
    results = ablation.run_ablation(named, workdir=str(tmp_path / "named"), seeds=[1],
                                    reference="plain")
    assert calls == [("named/rainnet_quick_rain/seed1", 1, "rain"), ("named/plain/seed1", 1, "in")]
    assert json.loads((tmp_path / "named" / "table.json").read_text())["reference"] == "plain"
    for bad in (["dirl:quick", "dirl:quick"], ["a/b=dirl:quick"]):
        with pytest.raises(ValueError, match="empty, has a '/' or is given twice"):
            ablation.named_arms(bad)
    with pytest.raises(ValueError, match="'row9' is not one of the arms"):
        ablation.run_ablation(named, workdir=str(tmp_path), reference="row9")
    # train=False: the scored runs only (rain has seed 1 alone), read by the real run_arm (which
    # would train the missing ones)
    monkeypatch.undo()
    for arm, seeds in (("plain", (1, 2)), ("rainnet_quick_rain", (1,))):
        for seed in seeds:
            (tmp_path / "named" / arm / f"seed{seed}").mkdir(parents=True, exist_ok=True)
            (tmp_path / "named" / arm / f"seed{seed}" / "eval.json").write_text(
                json.dumps(_harmonizer_run(50.0 + seed, 30.0)))
    shown = ablation.run_ablation(named, workdir=str(tmp_path / "named"), seeds=[1, 2, 3],
                                  reference="plain", train=False)
    assert {v: sorted(r) for v, r in shown.items()} == {"rainnet_quick_rain": [1], "plain": [1, 2]}
    assert shown["plain"][2] == _harmonizer_run(52.0, 30.0)
    with pytest.raises(ValueError, match="the reference 'plain' has no scored run"):
        ablation.run_ablation(named, workdir=str(tmp_path / "empty"), seeds=[1], reference="plain",
                              train=False)
    assert ablation.parse_seeds(["3"]) == [0, 1, 2] and ablation.parse_seeds(["4", "9"]) == [4, 9]
    assert ablation.parse_seeds([]) == []
    for bad, message in ((["0"], "at least 1"), (["a"], "count or a list"), (["2", "2"], "twice")):
        with pytest.raises(ValueError, match=message):
            ablation.parse_seeds(bad)
    assert ablation.reference_arm("rsrnet:quick", ["row2", "row9"]) == "row9"
    assert ablation.reference_arm("rsrnet:quick", ["row2", "row1"]) == "row2"
    with pytest.raises(ValueError, match="--reference 'row7' is not one of the variants"):
        ablation.reference_arm("rsrnet:quick", ["row2", "row1"], "row7")


def test_the_command_compares_a_configs_variants_or_whole_configs():
    """`jirl ablation` takes --config (and --variants) or --arm, not both and not neither; the
    default workdir follows."""
    from jirl.ablation.__main__ import compared

    assert compared([], "x/rsrnet.py:quick", [], None) == ("x/rsrnet.py:quick",
                                                          os.path.join("runs", "rsrnet_ablation"))
    named, workdir = compared(["dirl:quick", "u=unet:quick"], None, [], "w")
    assert list(named) == ["dirl_quick", "u"] and workdir == "w"
    for arms, config, variants, message in (
            (["dirl:quick"], "dirl:quick", [], "--arm, not both"),
            (["dirl:quick"], None, ["row2"], "--arm, not both"),
            ([], None, [], "give --config")):
        with pytest.raises(ValueError, match=message):
            compared(arms, config, variants, None)


def test_a_preempted_run_is_not_scored(tmp_path, monkeypatch):
    """A SIGTERM during an arm's training stops the ablation with its checkpoint saved and no
    eval.json, so the rerun resumes that run instead of taking it as finished."""
    from jirl.training.loop import Preempted

    def preempted(config, workdir, *, raise_on_preemption=False):
        assert raise_on_preemption  # without it the loop returns early, as if finished
        raise Preempted(f"SIGTERM: {workdir} saved step 5 of 9 and stopped; run again to resume")

    monkeypatch.setattr(ablation, "train_and_evaluate", preempted)
    arm = ablation.arm_config(ablation.arms("rainnet:quick")["in"])
    with pytest.raises(Preempted, match="saved step 5 of 9"):
        ablation.run_arm(arm, str(tmp_path / "in"))
    assert not (tmp_path / "in" / "eval.json").exists()

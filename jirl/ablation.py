"""Train and evaluate several variants of one config, then tabulate them (e.g. RSRNet's Table 2,
RainNet's IN-vs-RAIN ablation).

    python -m jirl.ablation --config configs/rsrnet.py:quick --workdir runs/rsrnet_table2
    python -m jirl.ablation --config configs/rsrnet.py:quick --variants row2,row9 -- --config.seed=1
    python -m jirl.ablation --config configs/rainnet.py --workdir runs/rain_vs_in

Run from the repository root (it calls ./train.py and ./eval.py). Each variant V is the config
`FILE:<variant>,V` (configs/rsrnet.py: row1..row9, see ROWS there), trained into
`<workdir>/<V>` and evaluated there on the test split (eval.py, per-iteration masks included when
the model has them); a variant whose eval.json exists is not run again, so an interrupted
ablation resumes. Arguments after `--` go to both train.py and eval.py. Writes
`<workdir>/table.md` (one row per variant: every scored mask's AP / F1 / IoU, the trivial
baselines and the wall time; a harmonizer's MSE / PSNR / fMSE) and `<workdir>/table.json`, and
with matplotlib installed (`pip install -e '.[plots]'`) `<workdir>/chart.png`, a bar chart of
the primary mask's scores. When the variants validated more than once during training (e.g.
configs/rainnet.py:quick scores the test split after every epoch), `table.md` also lists the
scores per epoch (and which variant leads at each) and `<workdir>/curves.png` draws them, one
panel per metric (a harmonizer: MSE and PSNR, as the RainNet seed assignment's figure).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

TASK_METRICS = {"localization": ("ap", "f1", "iou"), "harmonization": ("mse", "psnr", "fmse")}
LOWER_IS_BETTER = {"mse", "fmse"}
LABELS = {"ap": "AP", "f1": "F1", "iou": "IoU", "mse": "MSE", "psnr": "PSNR", "fmse": "fMSE"}
# The metrics of the per-epoch figure, one panel each.
CURVE_PANELS = {"localization": ("ap", "f1", "iou"), "harmonization": ("mse", "psnr")}
# Which variant leads at an epoch: jirl.metrics.SELECTION_METRIC (kept import-free here).
SELECTION = {"localization": "iou", "harmonization": "psnr"}


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m jirl.ablation", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="FILE[:variant], e.g. configs/rsrnet.py:quick")
    parser.add_argument("--variants", default="", help="comma-separated (default: the file's ROWS)")
    parser.add_argument("--workdir", default="", help="default: runs/<file stem>_ablation")
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    return parser.parse_args(argv), extra


def config_variants(config: str) -> tuple[str, str, Any]:
    """(file, base variant, the loaded config module) of a `FILE[:variant]` argument."""
    import importlib.util

    path, _, base = config.partition(":")
    if not os.path.isfile(path):
        raise SystemExit(f"jirl.ablation: no config file {path!r} (run from the repository root)")
    spec = importlib.util.spec_from_file_location("ablation_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, base, module


def has_iterations(module: Any, variant: str) -> bool:
    """Whether the model of config `module.get_config(variant)` has per-iteration masks."""
    from jirl.models import resolve_spec

    return resolve_spec(module.get_config(variant).model).step_masks is not None


def run_variant(path: str, base: str, variant: str, workdir: str, extra: list[str],
                per_iteration: bool) -> dict:
    """Trains and evaluates `path:base,variant` into `workdir` (skipped if eval.json exists)."""
    result_file = os.path.join(workdir, "eval.json")
    timing_file = os.path.join(workdir, "wall_seconds.json")
    if not os.path.exists(result_file):
        config = f"{path}:{_join(base, variant)}"
        common = ["--config", config, "--workdir", workdir, *extra]
        start = time.time()
        scoring = [f"--config.eval.per_iteration={per_iteration}"]
        for script, flags in (("train.py", []), ("eval.py", scoring)):
            proc = subprocess.run([sys.executable, script, *common, *flags])
            if proc.returncode != 0:
                raise SystemExit(f"jirl.ablation: {script} failed for {variant} (exit {proc.returncode})")
        with open(timing_file, "w", encoding="utf-8") as f:
            json.dump({"wall_seconds": time.time() - start}, f)
    with open(result_file, encoding="utf-8") as f:
        result = json.load(f)
    if os.path.exists(timing_file):
        with open(timing_file, encoding="utf-8") as f:
            result.update(json.load(f))
    return result


def _join(*variants: str) -> str:
    return ",".join(v for v in variants if v)


def _is_step(mask: str) -> bool:
    return mask.startswith("M^")


def table(results: dict[str, dict]) -> str:
    """Markdown: one row per variant, AP / F1 / IoU of every mask it scored (but the per-iteration
    ones), and its wall time."""
    metric_names = _metrics(results)
    masks = list(dict.fromkeys(m for r in results.values() for m in r["results"] if not _is_step(m)))
    head = ["variant", "model"] + [f"{m} {LABELS[k]}" for m in masks for k in metric_names] + [
        "wall (min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, r in results.items():
        cells = [variant, r.get("model", "")]
        for m in masks:
            scores = r["results"].get(m, {}).get("all")
            cells += [f"{scores[k]:.4f}" if scores else "" for k in metric_names]
        wall = r.get("wall_seconds")
        cells.append(f"{wall / 60:.1f}" if wall else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def iteration_table(results: dict[str, dict]) -> str:
    """Markdown: AP / F1 / IoU of the masks M^1..M^K after each iteration, per variant that has them."""
    lines = []
    for variant, r in results.items():
        steps = sorted((m for m in r["results"] if _is_step(m)), key=lambda m: int(m[2:]))
        if not steps:
            continue
        if not lines:
            lines = ["| variant | metric | " + " | ".join(f"k={m[2:]}" for m in steps) + " |",
                     "|---|---|" + "---|" * len(steps)]
        for key in TASK_METRICS["localization"]:
            values = " | ".join(f"{r['results'][m]['all'][key]:.4f}" for m in steps)
            lines.append(f"| {variant} | {LABELS[key]} | {values} |")
    return "\n".join(lines) + "\n" if lines else ""


def _task(result: dict) -> str:
    return result.get("task", "localization")  # eval.json before harmonizers: localization


def _metrics(results: dict[str, dict]) -> tuple[str, ...]:
    """The metrics of the variants' task (all variants of one config share it)."""
    tasks = {_task(r) for r in results.values()}
    if len(tasks) != 1:
        raise SystemExit(f"jirl.ablation: the variants mix tasks {sorted(tasks)}")
    return TASK_METRICS[tasks.pop()]


def epoch_scores(workdir: str) -> dict[float, dict[str, float]]:
    """{epoch: {metric: value}} of the validations logged in `<workdir>/metrics.jsonl` (the
    primary mask's `<split>/<metric>` records; epochs from the training records' step/epoch)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    per_epoch = [r["step"] / r["epoch"] for r in records if r.get("epoch")]
    if not per_epoch:
        return {}
    known = {k for names in TASK_METRICS.values() for k in names}
    out: dict[float, dict[str, float]] = {}
    for r in records:
        scores = {k.rpartition("/")[2]: v for k, v in r.items()
                  if "/" in k and k.rpartition("/")[2] in known}
        if scores:
            out[round(r["step"] / per_epoch[0], 3)] = scores
    return out


def epoch_table(curves: dict[str, dict[float, dict[str, float]]], metric_names: tuple[str, ...],
                lead_metric: str) -> str:
    """Markdown: one row per epoch, each variant's scores, and which variant leads by
    `lead_metric`."""
    names = list(curves)
    epochs = sorted(set.intersection(*(set(c) for c in curves.values())))
    if len(epochs) < 2:
        return ""
    head = ["epoch"] + [f"{v} {LABELS[k]}" for k in metric_names for v in names] + [
        f"leads ({LABELS[lead_metric]})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in epochs:
        cells = [f"{e:g}"] + [f"{curves[v][e][k]:.4f}" for k in metric_names for v in names]
        pick = min if lead_metric in LOWER_IS_BETTER else max
        cells.append(pick(names, key=lambda v: curves[v][e][lead_metric]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def curve_chart(curves: dict[str, dict[float, dict[str, float]]], panels: tuple[str, ...],
                path: str) -> bool:
    """One panel per metric, one curve per variant, over epochs, as PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        for variant, curve in curves.items():
            epochs = sorted(curve)
            ax.plot(epochs, [curve[e][key] for e in epochs], marker="o", label=variant)
        ax.set_xlabel("epoch")
        ax.set_title(LABELS[key] + (" (lower is better)" if key in LOWER_IS_BETTER else ""))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, path)
    return True


def _save(fig, path: str) -> None:
    """Writes a matplotlib figure to `path` atomically and closes it."""
    import matplotlib.pyplot as plt

    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def primary_mask(result: dict) -> str:
    """The mask that the model of an eval.json is judged by (its ModelSpec's primary_mask)."""
    if "primary_mask" in result:
        return result["primary_mask"]
    from jirl.models import get_spec  # an eval.json written before it recorded its primary mask

    return get_spec(result["model"]).primary_mask


def bar_chart(results: dict[str, dict], path: str) -> bool:
    """A grouped bar chart (AP / F1 / IoU per variant, primary mask) as PNG; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import numpy as np

    names = list(results)
    metric_names = _metrics(results)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 1 if metric_names == TASK_METRICS["localization"] else len(
        metric_names), figsize=(1.2 * len(names) + 2, 3.5), squeeze=False)
    for i, key in enumerate(metric_names):
        values = [results[n]["results"][primary_mask(results[n])]["all"][key] for n in names]
        if axes.shape[1] == 1:  # AP / F1 / IoU share one [0, 1] axis
            axes[0, 0].bar(x + (i - 1) * 0.27, values, 0.27, label=LABELS[key])
        else:
            axes[0, i].bar(x, values, 0.6)
            axes[0, i].set_title(LABELS[key])
            axes[0, i].set_xticks(x, names)
    if axes.shape[1] == 1:
        axes[0, 0].set_xticks(x, names)
        axes[0, 0].set_ylim(0, 1)
        axes[0, 0].legend(ncols=3, loc="upper left")
    fig.tight_layout()
    _save(fig, path)
    return True


def main(argv: list[str] | None = None) -> None:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    path, base, module = config_variants(args.config)
    variants = [v for v in args.variants.split(",") if v] or list(getattr(module, "ROWS", {}))
    if not variants:
        raise SystemExit(f"jirl.ablation: {path} defines no ROWS; pass --variants")
    stem = os.path.splitext(os.path.basename(path))[0]
    workdir = args.workdir or os.path.join("runs", f"{stem}_ablation")
    results = {v: run_variant(path, base, v, os.path.join(workdir, v), extra,
                              has_iterations(module, _join(base, v))) for v in variants}
    os.makedirs(workdir, exist_ok=True)
    markdown = table(results)
    steps = iteration_table(results)
    if steps:
        markdown += "\nPer iteration (the RSR masks M^k):\n\n" + steps
    curves = {v: epoch_scores(os.path.join(workdir, v)) for v in variants}
    task = _task(next(iter(results.values())))
    per_epoch = epoch_table(curves, TASK_METRICS[task], SELECTION[task]) if all(curves.values()) else ""
    if per_epoch:
        markdown += "\nPer epoch (validation during training):\n\n" + per_epoch
    for name, text in (("table.md", markdown), ("table.json", json.dumps(results, indent=2))):
        with open(os.path.join(workdir, name + ".tmp"), "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(os.path.join(workdir, name + ".tmp"), os.path.join(workdir, name))
    print(markdown)
    if bar_chart(results, os.path.join(workdir, "chart.png")):
        print(f"chart: {os.path.join(workdir, 'chart.png')}")
    else:
        print("chart: not drawn (pip install matplotlib, or jirl[plots])")
    if per_epoch and curve_chart(curves, CURVE_PANELS[task], os.path.join(workdir, "curves.png")):
        print(f"curves: {os.path.join(workdir, 'curves.png')}")


if __name__ == "__main__":
    main()

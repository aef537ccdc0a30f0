"""Train and evaluate several variants of one config, then tabulate them (e.g. RSRNet's Table 2).

    python -m jirl.ablation --config configs/rsrnet.py:quick --workdir runs/rsrnet_table2
    python -m jirl.ablation --config configs/rsrnet.py:quick --variants row2,row9 -- --config.seed=1

Run from the repository root (it calls ./train.py and ./eval.py). Each variant V is the config
`FILE:<variant>,V` (configs/rsrnet.py: row1..row9, see ROWS there), trained into
`<workdir>/<V>` and evaluated there on the test split (eval.py, per-iteration masks included when
the model has them); a variant whose eval.json exists is not run again, so an interrupted
ablation resumes. Arguments after `--` go to both train.py and eval.py. Writes
`<workdir>/table.md` (one row per variant: every scored mask's AP / F1 / IoU, the trivial
baselines and the wall time) and `<workdir>/table.json`, and with matplotlib installed
(`pip install -e '.[plots]'`) `<workdir>/chart.png`, a bar chart of the primary mask's scores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

METRICS = ("ap", "f1", "iou")
LABELS = {"ap": "AP", "f1": "F1", "iou": "IoU"}


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
    masks = list(dict.fromkeys(m for r in results.values() for m in r["results"] if not _is_step(m)))
    head = ["variant", "model"] + [f"{m} {LABELS[k]}" for m in masks for k in METRICS] + ["wall (min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, r in results.items():
        cells = [variant, r.get("model", "")]
        for m in masks:
            scores = r["results"].get(m, {}).get("all")
            cells += [f"{scores[k]:.4f}" if scores else "" for k in METRICS]
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
        for key in METRICS:
            values = " | ".join(f"{r['results'][m]['all'][key]:.4f}" for m in steps)
            lines.append(f"| {variant} | {LABELS[key]} | {values} |")
    return "\n".join(lines) + "\n" if lines else ""


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
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.5))
    for i, key in enumerate(METRICS):
        values = [results[n]["results"][primary_mask(results[n])]["all"][key] for n in names]
        ax.bar(x + (i - 1) * 0.27, values, 0.27, label=LABELS[key])
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1)
    ax.legend(ncols=3, loc="upper left")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
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
    for name, text in (("table.md", markdown), ("table.json", json.dumps(results, indent=2))):
        with open(os.path.join(workdir, name + ".tmp"), "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(os.path.join(workdir, name + ".tmp"), os.path.join(workdir, name))
    print(markdown)
    if bar_chart(results, os.path.join(workdir, "chart.png")):
        print(f"chart: {os.path.join(workdir, 'chart.png')}")
    else:
        print("chart: not drawn (pip install matplotlib, or jirl[plots])")


if __name__ == "__main__":
    main()

"""Ablations: several variants of one config trained and scored in this process, then tabulated
(RSRNet's Table 2, MadisNet with and without E_dom, RainNet's IN against RAIN).

    jirl ablation --config rsrnet:quick --workdir runs/rsrnet_table2
    jirl ablation --config rsrnet:quick --variants row2,row9 --config.seed=1
    jirl ablation --config rainnet:quick --workdir runs/rain_vs_in

(also `python -m jirl.ablation`). Each variant V is the config `FILE:<variant>,V` (the file's
ROWS, e.g. rsrnet's row1..row9) with every --config.key=value override applied, trained into
`<workdir>/<V>` (`train_and_evaluate`) and scored there on the test split (`evaluate_checkpoint`,
per-iteration masks included when the model has them) into `<workdir>/<V>/eval.json`; a variant
whose eval.json exists is not run again, so an interrupted ablation resumes. `write_report` then
writes `<workdir>/table.md` (one row per variant: every scored mask's scores, the trivial
baselines and the wall time), `table.json`, and with matplotlib (`pip install 'jirl[plots]'`)
`chart.png`, a bar chart of the primary masks' scores. When the variants validated more than
once during training (rainnet:quick scores the test split after every epoch), `table.md` also
lists the scores per epoch (and which variant leads at each by the task's selection metric) and
`curves.png` draws them, one panel per metric of the task's `curve_metrics`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections

from jirl import files
from jirl.metrics import TITLES
from jirl.models import get_spec, resolve_spec
from jirl.runtime import configs
from jirl.tasks import LOCALIZATION, TASKS, Task, get_task
from jirl.training.evaluate import evaluate_checkpoint
from jirl.training.loop import train_and_evaluate

RESULTS = "eval.json"


def _join(*variants: str | None) -> str:
    return ",".join(v for v in variants if v)


def arms(config: str, variants: Sequence[str] = ()) -> dict[str, str]:
    """{variant: its config argument "PATH:<base>,<variant>"} of `config` ("NAME[:base]" or
    "FILE[:base]"); `variants` default to the file's ROWS. Raises ValueError for a config
    without ROWS and no variants."""
    path, base = configs.split(configs.resolve(config))
    names = list(variants) or list(getattr(configs.load_module(path), "ROWS", {}))
    if not names:
        raise ValueError(f"{config} defines no ROWS; pass the variants to compare")
    return {v: f"{path}:{_join(base, v)}" for v in names}


def arm_config(argument: str, overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
    """The config of one arm: `argument` loaded, then each flat `overrides` key (e.g.
    "model.stem_features") set as --config.key=value would."""
    config = configs.load(argument)
    for key, value in (overrides or {}).items():
        node, _, leaf = key.rpartition(".")
        parent = config
        for part in filter(None, node.split(".")):
            parent = parent.get(part) if isinstance(parent, ml_collections.ConfigDict) else None
        if not isinstance(parent, ml_collections.ConfigDict) or leaf not in parent:
            raise ValueError(f"--config.{key}: the variant {argument} has no such key")
        parent[leaf] = value
    return config


def run_arm(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains `config` into `workdir` and scores its best checkpoint on `config.eval.split`
    (with the per-iteration masks of an iterative model); the result, with the wall time, is
    `<workdir>/eval.json`. An arm whose eval.json exists is read, not run again."""
    result_file = os.path.join(workdir, RESULTS)
    if not os.path.exists(result_file):
        start = time.time()
        train_and_evaluate(config, workdir)
        scoring = ml_collections.ConfigDict(config.to_dict())
        scoring.eval.per_iteration = resolve_spec(config.model).step_masks is not None
        payload = evaluate_checkpoint(scoring, workdir)
        payload["wall_seconds"] = time.time() - start
        if jax.process_index() == 0:
            files.write_json(result_file, payload)
        return payload
    with open(result_file, encoding="utf-8") as f:
        result = json.load(f)
    timing_file = os.path.join(workdir, "wall_seconds.json")  # written by earlier versions
    if "wall_seconds" not in result and os.path.exists(timing_file):
        with open(timing_file, encoding="utf-8") as f:
            result.update(json.load(f))
    return result


def run_ablation(config: str, variants: Sequence[str] = (), *, workdir: str,
                 overrides: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """Every arm of `config` (`arms`) trained, scored and written by `run_arm` under
    `<workdir>/<variant>`, then `write_report`; returns {variant: its eval.json}."""
    configs_by_arm = {v: arm_config(a, overrides) for v, a in arms(config, variants).items()}
    results = {v: run_arm(c, os.path.join(workdir, v)) for v, c in configs_by_arm.items()}
    if jax.process_index() == 0:
        write_report(results, workdir)
    return results


def _is_step(mask: str) -> bool:
    return mask.startswith("M^")


def table(results: dict[str, dict]) -> str:
    """Markdown: one row per variant, AP / F1 / IoU of every mask it scored (but the per-iteration
    ones), and its wall time."""
    metric_names = task_of(results).metrics
    masks = list(dict.fromkeys(m for r in results.values() for m in r["results"] if not _is_step(m)))
    head = ["variant", "model"] + [f"{m} {TITLES[k]}" for m in masks for k in metric_names] + [
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
        for key in LOCALIZATION.metrics:
            values = " | ".join(f"{r['results'][m]['all'][key]:.4f}" for m in steps)
            lines.append(f"| {variant} | {TITLES[key]} | {values} |")
    return "\n".join(lines) + "\n" if lines else ""


def task_of(results: dict[str, dict]) -> Task:
    """The task of the variants' eval.json results (all variants of one config share it; an
    eval.json written before harmonizers existed is a localizer's)."""
    names = {r.get("task", LOCALIZATION.name) for r in results.values()}
    if len(names) != 1:
        raise ValueError(f"the variants mix tasks {sorted(names)}")
    return get_task(names.pop())


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
    known = {k for task in TASKS.values() for k in task.metrics}
    out: dict[float, dict[str, float]] = {}
    for r in records:
        scores = {k.rpartition("/")[2]: v for k, v in r.items()
                  if "/" in k and k.rpartition("/")[2] in known}
        if scores:
            out[round(r["step"] / per_epoch[0], 3)] = scores
    return out


def epoch_table(curves: dict[str, dict[float, dict[str, float]]], task: Task) -> str:
    """Markdown: one row per epoch, each variant's scores of the task's metrics, and which
    variant leads by its selection metric."""
    names = list(curves)
    epochs = sorted(set.intersection(*(set(c) for c in curves.values())))
    if len(epochs) < 2:
        return ""
    lead = task.selection
    head = ["epoch"] + [f"{v} {TITLES[k]}" for k in task.metrics for v in names] + [
        f"leads ({TITLES[lead]})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in epochs:
        cells = [f"{e:g}"] + [f"{curves[v][e][k]:.4f}" for k in task.metrics for v in names]
        pick = min if lead in task.lower_is_better else max
        cells.append(pick(names, key=lambda v: curves[v][e][lead]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def curve_chart(curves: dict[str, dict[float, dict[str, float]]], task: Task, path: str) -> bool:
    """One panel per metric of `task.curve_metrics`, one curve per variant, over epochs, as PNG;
    False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels, lower_is_better = task.curve_metrics, task.lower_is_better
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        for variant, curve in curves.items():
            epochs = sorted(curve)
            ax.plot(epochs, [curve[e][key] for e in epochs], marker="o", label=variant)
        ax.set_xlabel("epoch")
        ax.set_title(TITLES[key] + (" (lower is better)" if key in lower_is_better else ""))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, path)
    return True


def _save(fig, path: str) -> None:
    """Writes a matplotlib figure to `path` as PNG atomically and closes it."""
    import matplotlib.pyplot as plt

    with files.atomic_write(path, "wb") as f:
        fig.savefig(f, dpi=100, format="png")
    plt.close(fig)


def primary_mask(result: dict) -> str:
    """The mask that the model of an eval.json is judged by (its ModelSpec's primary_mask)."""
    if "primary_mask" in result:
        return result["primary_mask"]
    return get_spec(result["model"]).primary_mask  # an eval.json from before it recorded it


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
    metric_names = task_of(results).metrics
    x = np.arange(len(names))
    shared_axis = metric_names == LOCALIZATION.metrics  # AP / F1 / IoU share one [0, 1] axis
    fig, axes = plt.subplots(1, 1 if shared_axis else len(metric_names),
                             figsize=(1.2 * len(names) + 2, 3.5), squeeze=False)
    for i, key in enumerate(metric_names):
        values = [results[n]["results"][primary_mask(results[n])]["all"][key] for n in names]
        if shared_axis:
            axes[0, 0].bar(x + (i - 1) * 0.27, values, 0.27, label=TITLES[key])
        else:
            axes[0, i].bar(x, values, 0.6)
            axes[0, i].set_title(TITLES[key])
            axes[0, i].set_xticks(x, names)
    if shared_axis:
        axes[0, 0].set_xticks(x, names)
        axes[0, 0].set_ylim(0, 1)
        axes[0, 0].legend(ncols=3, loc="upper left")
    fig.tight_layout()
    _save(fig, path)
    return True


def write_report(results: dict[str, dict], workdir: str) -> str:
    """Writes `<workdir>/table.md`, `table.json` and the charts; returns the markdown."""
    markdown = table(results)
    steps = iteration_table(results)
    if steps:
        markdown += "\nPer iteration (the RSR masks M^k):\n\n" + steps
    curves = {v: epoch_scores(os.path.join(workdir, v)) for v in results}
    task = task_of(results)
    per_epoch = epoch_table(curves, task) if all(curves.values()) else ""
    if per_epoch:
        markdown += "\nPer epoch (validation during training):\n\n" + per_epoch
    files.write_text(os.path.join(workdir, "table.md"), markdown)
    files.write_json(os.path.join(workdir, "table.json"), results)
    bar_chart(results, os.path.join(workdir, "chart.png"))
    if per_epoch:
        curve_chart(curves, task, os.path.join(workdir, "curves.png"))
    return markdown

"""An ablation's tables and charts, over seeds (`jirl.ablation.stats` does the statistics).

`results` is {variant: {seed: that run's eval.json}}; `curves` is {variant: {seed: {epoch:
{metric: value}}}} (`epoch_scores` of each run's metrics.jsonl). With one seed per arm the tables
show the values as they are; with several, each cell is mean ± std over seeds, the intervals
table gives the 95 % Student t interval of each arm's mean and of its paired difference from the
reference arm (the same seed in both) with a verdict, the subset table does the same on each part
of the split (foreground-size bins, sub-datasets), the per-epoch table epoch by epoch, and for an
iterative model (RSRNet's M^k) each iteration paired with the first.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from jirl import files
from jirl.ablation import stats
from jirl.metrics import TITLES
from jirl.models import get_spec
from jirl.tasks import LOCALIZATION, TASKS, Task, get_task

Runs = Mapping[str, Mapping[int, dict]]  # {variant: {seed: eval.json}}
Curves = Mapping[str, Mapping[int, Mapping[float, Mapping[str, float]]]]


def _is_step(mask: str) -> bool:
    return mask.startswith("M^")


def _steps(result: dict) -> list[str]:
    """The per-iteration masks M^1..M^K of an eval.json, in order (none for most models)."""
    return sorted((m for m in result["results"] if _is_step(m)), key=lambda m: int(m[2:]))


def _runs(results: Runs) -> list[dict]:
    return [r for runs in results.values() for r in runs.values()]


def task_of(results: Runs) -> Task:
    """The task of the runs' eval.json results (all variants of one config share it; an
    eval.json written before harmonizers existed is a localizer's)."""
    names = {r.get("task", LOCALIZATION.name) for r in _runs(results)}
    if len(names) != 1:
        raise ValueError(f"the variants mix tasks {sorted(names)}")
    return get_task(names.pop())


def primary_mask(result: dict) -> str:
    """The mask that the model of an eval.json is judged by (its ModelSpec's primary_mask)."""
    if "primary_mask" in result:
        return result["primary_mask"]
    return get_spec(result["model"]).primary_mask  # an eval.json from before it recorded it


def scores(runs: Mapping[int, dict], mask: str, metric: str,
           subset: str = "all") -> dict[int, float]:
    """{seed: the metric of `mask` on `subset` of the split ("all": the whole split)} over the
    seeds that scored it."""
    return {seed: r["results"][mask][subset][metric] for seed, r in runs.items()
            if subset in r["results"].get(mask, {})}


def subsets(results: Runs) -> list[str]:
    """The subsets that split the scored split (foreground-size bins, iHarmony4's sub-datasets):
    those of the first run's primary mask with fewer images than "all"."""
    first = _runs(results)[0]
    rows = first["results"][primary_mask(first)]
    return [s for s, row in rows.items()
            if s != "all" and row.get("count", 0) < rows["all"].get("count", 0)]


def summary(runs: Mapping[int, dict], metrics: tuple[str, ...]) -> dict[str, dict[str, dict]]:
    """{mask: {metric: `stats.interval` over seeds}} of one arm."""
    masks = dict.fromkeys(m for r in runs.values() for m in r["results"])
    return {m: {k: stats.interval(list(scores(runs, m, k).values())) for k in metrics}
            for m in masks}


def paired(results: Runs, reference: str, task: Task,
           subset: str = "all") -> dict[str, dict[str, dict]]:
    """{variant: {metric: `stats.paired_difference` from the reference}} on each arm's primary
    mask over `subset` of the split (every arm but the reference; empty with one seed)."""
    ref = results[reference]
    ref_mask = primary_mask(next(iter(ref.values())))
    out = {}
    for variant, runs in results.items():
        if variant == reference or len(runs) < 2:
            continue
        mask = primary_mask(next(iter(runs.values())))
        out[variant] = {k: stats.paired_difference(scores(runs, mask, k, subset),
                                                   scores(ref, ref_mask, k, subset),
                                                   k in task.lower_is_better)
                        for k in task.metrics}
    return out


def _cell(iv: dict) -> str:
    return f"{iv['mean']:.4f}" if iv["std"] is None else f"{iv['mean']:.4f} ± {iv['std']:.4f}"


def _range(iv: dict) -> str:
    return "" if iv["low"] is None else f"[{iv['low']:.4f}, {iv['high']:.4f}]"


def table(results: Runs) -> str:
    """Markdown: one row per variant, its number of seeds, every scored mask's metrics (the
    per-iteration ones apart) as mean ± std over seeds, and its mean wall time."""
    metric_names = task_of(results).metrics
    masks = list(dict.fromkeys(m for r in _runs(results) for m in r["results"] if not _is_step(m)))
    head = ["variant", "model", "seeds"] + [f"{m} {TITLES[k]}" for m in masks
                                            for k in metric_names] + ["wall (min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for variant, runs in results.items():
        first = next(iter(runs.values()))
        cells = [variant, first.get("model", ""), str(len(runs))]
        for m in masks:
            values = [scores(runs, m, k) for k in metric_names]
            cells += [_cell(stats.interval(list(v.values()))) if v else "" for v in values]
        walls = [r["wall_seconds"] for r in runs.values() if r.get("wall_seconds")]
        cells.append(f"{sum(walls) / len(walls) / 60:.1f}" if walls else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def interval_table(results: Runs, reference: str) -> str:
    """Markdown: per variant and metric of its primary mask, mean ± std over seeds, the 95 %
    interval of the mean, and the paired difference from `reference` with its interval and
    verdict. Empty unless some arm ran two seeds or more."""
    if all(len(runs) < 2 for runs in results.values()):
        return ""
    task = task_of(results)
    diffs = paired(results, reference, task)
    lines = [f"| variant | metric | mean ± std | 95 % interval | − {reference} (paired) | "
             "95 % interval | n | verdict |", "|---|---|---|---|---|---|---|---|"]
    for variant, runs in results.items():
        mask = primary_mask(next(iter(runs.values())))
        for k in task.metrics:
            iv = stats.interval(list(scores(runs, mask, k).values()))
            d = diffs.get(variant, {}).get(k)
            tail = ([f"{d['mean']:+.4f}", _range(d), str(d["n"]), d["verdict"]] if d
                    else ["(reference)" if variant == reference else "", "", "", ""])
            lines.append("| " + " | ".join([variant, TITLES[k], _cell(iv), _range(iv), *tail])
                         + " |")
    return "\n".join(lines) + "\n"


def subset_table(results: Runs, reference: str) -> str:
    """Markdown: per subset of the split (`subsets`), its images, and each variant's paired
    difference from `reference` per metric with its interval and verdict. Empty without
    subsets or with one seed."""
    task = task_of(results)
    by_subset = {s: paired(results, reference, task, s) for s in subsets(results)}
    if not any(by_subset.values()):
        return ""
    lines = [f"| subset | images | variant | metric | − {reference} (paired) | 95 % interval | "
             "verdict |", "|---|---|---|---|---|---|---|"]
    first = _runs(results)[0]
    rows = first["results"][primary_mask(first)]
    for subset, diffs in by_subset.items():
        for variant, per_metric in diffs.items():
            for k, d in per_metric.items():
                lines.append(f"| {subset} | {rows[subset]['count']} | {variant} | {TITLES[k]} | "
                             f"{d['mean']:+.4f} | {_range(d)} | {d['verdict']} |")
    return "\n".join(lines) + "\n"


def iteration_table(results: Runs) -> str:
    """Markdown: AP / F1 / IoU of the masks M^1..M^K after each iteration (mean over seeds), per
    variant that has them."""
    lines = []
    for variant, runs in results.items():
        steps = _steps(next(iter(runs.values())))
        if not steps:
            continue
        if not lines:
            lines = ["| variant | metric | " + " | ".join(f"k={m[2:]}" for m in steps) + " |",
                     "|---|---|" + "---|" * len(steps)]
        for key in LOCALIZATION.metrics:
            values = " | ".join(_cell(stats.interval(list(scores(runs, m, key).values())))
                                for m in steps)
            lines.append(f"| {variant} | {TITLES[key]} | {values} |")
    return "\n".join(lines) + "\n" if lines else ""


def iteration_paired(results: Runs) -> dict[str, dict[str, dict[str, dict]]]:
    """{variant: {metric: {"M^k": `stats.paired_difference` of M^k from M^1}}} for k >= 2, per
    variant scored per iteration over two seeds or more: the same run's mask after k iterations
    against after one (does iterating help?)."""
    out: dict[str, dict[str, dict[str, dict]]] = {}
    for variant, runs in results.items():
        steps = _steps(next(iter(runs.values())))
        if len(steps) < 2 or len(runs) < 2:
            continue
        out[variant] = {k: {m: stats.paired_difference(scores(runs, m, k), scores(runs, steps[0], k),
                                                       k in LOCALIZATION.lower_is_better)
                            for m in steps[1:]}
                        for k in LOCALIZATION.metrics}
    return out


def iteration_gain_table(results: Runs) -> str:
    """Markdown: per variant and metric, the paired difference of the last iteration's mask
    M^K from M^1 over seeds, its 95 % interval and verdict. Empty without two seeds."""
    lines = []
    for variant, per_metric in iteration_paired(results).items():
        for k, by_step in per_metric.items():
            last, d = list(by_step.items())[-1]
            if not lines:
                lines = ["| variant | metric | M^K − M^1 (paired) | 95 % interval | n | verdict |",
                         "|---|---|---|---|---|---|"]
            lines.append(f"| {variant} | {TITLES[k]} | {last}: {d['mean']:+.4f} | {_range(d)} | "
                         f"{d['n']} | {d['verdict']} |")
    return "\n".join(lines) + "\n" if lines else ""


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
        values = {k.rpartition("/")[2]: v for k, v in r.items()
                  if "/" in k and k.rpartition("/")[2] in known}
        if values:
            out[round(r["step"] / per_epoch[0], 3)] = values
    return out


def common_epochs(curves: Curves) -> list[float]:
    """The epochs every run of every variant validated at."""
    sets = [set(c) for runs in curves.values() for c in runs.values()]
    return sorted(set.intersection(*sets)) if sets else []


def epoch_values(curves: Curves, variant: str, epoch: float, metric: str) -> dict[int, float]:
    """{seed: metric at `epoch`} of one variant."""
    return {seed: c[epoch][metric] for seed, c in curves[variant].items()}


def epoch_paired(curves: Curves, task: Task, reference: str) -> dict[str, dict[str, dict]]:
    """{variant: {metric: {epoch: `stats.paired_difference` from the reference}}} for every
    variant but the reference, at every common epoch (variants with two seeds or more)."""
    out = {}
    for variant, runs in curves.items():
        if variant == reference or len(runs) < 2:
            continue
        out[variant] = {k: {e: stats.paired_difference(
            epoch_values(curves, variant, e, k), epoch_values(curves, reference, e, k),
            k in task.lower_is_better) for e in common_epochs(curves)} for k in task.metrics}
    return out


def epoch_table(curves: Curves, task: Task, reference: str | None = None) -> str:
    """Markdown: one row per epoch, each variant's scores of the task's metrics (mean ± std over
    seeds), which variant leads by the selection metric's mean and, with several seeds, each
    variant's paired difference from `reference` per metric with its verdict."""
    names = list(curves)
    epochs = common_epochs(curves)
    if len(epochs) < 2:
        return ""
    reference = reference or names[0]
    diffs = epoch_paired(curves, task, reference)
    lead = task.selection
    head = (["epoch"] + [f"{v} {TITLES[k]}" for k in task.metrics for v in names]
            + [f"leads ({TITLES[lead]})"]
            + [f"{v} − {reference} {TITLES[k]}" for v in diffs for k in task.metrics])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in epochs:
        means = {v: {k: stats.interval(list(epoch_values(curves, v, e, k).values()))
                     for k in task.metrics} for v in names}
        cells = [f"{e:g}"] + [_cell(means[v][k]) for k in task.metrics for v in names]
        pick = min if lead in task.lower_is_better else max
        cells.append(pick(names, key=lambda v: means[v][lead]["mean"]))
        cells += [f"{d[k][e]['mean']:+.4f} {_range(d[k][e])} {d[k][e]['verdict']}"
                  for d in diffs.values() for k in task.metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdict_lines(curves: Curves, task: Task, reference: str) -> list[str]:
    """One sentence per variant and metric: from which epoch on the paired interval says
    "better" or "worse" than the reference at every later epoch, or that it does not."""
    out = []
    for variant, per_metric in epoch_paired(curves, task, reference).items():
        for k, by_epoch in per_metric.items():
            epochs = sorted(by_epoch)
            last = by_epoch[epochs[-1]]["verdict"]
            if last == stats.NO_DIFFERENCE:
                out.append(f"{variant} vs {reference}, {TITLES[k]}: {last} at the last epoch "
                           f"({epochs[-1]:g})")
                continue
            start = epochs[-1]
            for e in reversed(epochs):
                if by_epoch[e]["verdict"] != last:
                    break
                start = e
            out.append(f"{variant} vs {reference}, {TITLES[k]}: {last} from epoch {start:g} on")
    return out


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def curve_chart(curves: Curves, task: Task, path: str) -> bool:
    """One panel per metric of `task.curve_metrics`: each seed's curve faint, each variant's
    mean over seeds bold with its 95 % interval as a band; PNG. False without matplotlib."""
    plt = _plt()
    if plt is None:
        return False
    panels, lower_is_better = task.curve_metrics, task.lower_is_better
    epochs = common_epochs(curves)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        for i, variant in enumerate(curves):
            _band(ax, epochs, {seed: [c[e][key] for e in epochs]
                               for seed, c in curves[variant].items()}, f"C{i}", variant)
        ax.set_xlabel("epoch")
        ax.set_title(TITLES[key] + (" (lower is better)" if key in lower_is_better else ""))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, path)
    return True


def _band(ax, xs: list, series: Mapping[int, list[float]], color: str, label: str) -> None:
    """Each seed's series faint, their mean bold with its 95 % interval as a band."""
    for ys in series.values():
        ax.plot(xs, ys, color=color, alpha=0.25, lw=0.8)
    ivs = [stats.interval([ys[j] for ys in series.values()]) for j in range(len(xs))]
    ax.plot(xs, [iv["mean"] for iv in ivs], color=color, marker="o", lw=2,
            label=f"{label} (n={len(series)})")
    if all(iv["low"] is not None for iv in ivs):
        ax.fill_between(xs, [iv["low"] for iv in ivs], [iv["high"] for iv in ivs],
                        color=color, alpha=0.2)


def iteration_chart(results: Runs, path: str) -> bool:
    """One panel per localization metric over the iterations k of the masks M^k: each seed
    faint, each variant's mean with its 95 % band; PNG. False without matplotlib or without
    per-iteration masks."""
    plt = _plt()
    iterative = {v: runs for v, runs in results.items() if _steps(next(iter(runs.values())))}
    if plt is None or not iterative:
        return False
    panels = LOCALIZATION.metrics
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        for i, (variant, runs) in enumerate(iterative.items()):
            steps = _steps(next(iter(runs.values())))
            _band(ax, [int(m[2:]) for m in steps],
                  {seed: [r["results"][m]["all"][key] for m in steps] for seed, r in runs.items()},
                  f"C{i}", variant)
        ax.set_xlabel("iteration k (mask M^k)")
        ax.set_title(TITLES[key])
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


def bar_chart(results: Runs, path: str) -> bool:
    """Bars of each variant's mean (primary mask) with its 95 % interval, each seed a dot; PNG.
    False without matplotlib."""
    plt = _plt()
    if plt is None:
        return False
    import numpy as np

    names = list(results)
    metric_names = task_of(results).metrics
    x = np.arange(len(names))
    shared_axis = metric_names == LOCALIZATION.metrics  # AP / F1 / IoU share one [0, 1] axis
    fig, axes = plt.subplots(1, 1 if shared_axis else len(metric_names),
                             figsize=(1.2 * len(names) + 2, 3.5), squeeze=False)
    width = 0.27 if shared_axis else 0.6
    for i, key in enumerate(metric_names):
        ax = axes[0, 0 if shared_axis else i]
        offset = (i - 1) * width if shared_axis else 0.0
        values = [list(scores(results[n], primary_mask(next(iter(results[n].values()))),
                              key).values()) for n in names]
        ivs = [stats.interval(v) for v in values]
        errors = [[0 if iv["low"] is None else iv["mean"] - iv["low"] for iv in ivs]] * 2
        ax.bar(x + offset, [iv["mean"] for iv in ivs], width, yerr=errors, capsize=3,
               label=TITLES[key] if shared_axis else None, color=f"C{i}" if shared_axis else "C0")
        for j, v in enumerate(values):
            ax.scatter([x[j] + offset] * len(v), v, s=8, color="k", zorder=3)
        if not shared_axis:
            ax.set_title(TITLES[key])
            ax.set_xticks(x, names)
    if shared_axis:
        axes[0, 0].set_xticks(x, names)
        axes[0, 0].set_ylim(0, 1)
        axes[0, 0].legend(ncols=3, loc="upper left")
    fig.tight_layout()
    _save(fig, path)
    return True


def report_json(results: Runs, curves: Curves, reference: str) -> dict:
    """table.json: the reference, the confidence, and per variant its runs by seed, its
    summary, its paired differences from the reference, per epoch the same, and (iterative
    models) each iteration's paired difference from the first."""
    task = task_of(results)
    diffs = paired(results, reference, task)
    by_subset = {s: paired(results, reference, task, s) for s in subsets(results)}
    per_epoch = epoch_paired(curves, task, reference) if len(common_epochs(curves)) >= 2 else {}
    per_iteration = iteration_paired(results)
    return {"reference": reference, "confidence": stats.CONFIDENCE, "arms": {
        v: {"seeds": {str(s): r for s, r in runs.items()},
            "summary": summary(runs, task.metrics),
            "paired": diffs.get(v, {}),
            "paired_by_subset": {s: d[v] for s, d in by_subset.items() if v in d},
            "per_epoch_paired": {k: {f"{e:g}": d for e, d in by_e.items()}
                                 for k, by_e in per_epoch.get(v, {}).items()},
            "per_iteration_paired": per_iteration.get(v, {})}
        for v, runs in results.items()}}


def write_report(results: Runs, curves: Curves, workdir: str, reference: str) -> str:
    """Writes `<workdir>/table.md`, `table.json` and the charts; returns the markdown."""
    task = task_of(results)
    markdown = table(results)
    intervals = interval_table(results, reference)
    if intervals:
        markdown += (f"\n95 % intervals over seeds (Student t), and the paired difference from "
                     f"{reference} (same seed):\n\n" + intervals)
    split = subset_table(results, reference)
    if split:
        markdown += ("\nBy subset of the split (foreground size, sub-dataset), the paired "
                     f"difference from {reference}:\n\n" + split)
    steps = iteration_table(results)
    if steps:
        markdown += "\nPer iteration (the RSR masks M^k):\n\n" + steps
        gain = iteration_gain_table(results)
        if gain:
            markdown += ("\nThe last iteration against the first (same run, paired over "
                         "seeds):\n\n" + gain)
    has_curves = all(c for runs in curves.values() for c in runs.values())
    per_epoch = epoch_table(curves, task, reference) if has_curves else ""
    if per_epoch:
        markdown += "\nPer epoch (validation during training):\n\n" + per_epoch
        lines = verdict_lines(curves, task, reference)
        if lines:
            markdown += "\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    files.write_text(os.path.join(workdir, "table.md"), markdown)
    files.write_json(os.path.join(workdir, "table.json"),
                     report_json(results, curves if has_curves else {}, reference))
    bar_chart(results, os.path.join(workdir, "chart.png"))
    iteration_chart(results, os.path.join(workdir, "iterations.png"))
    if per_epoch:
        curve_chart(curves, task, os.path.join(workdir, "curves.png"))
    return markdown

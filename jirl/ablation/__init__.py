"""Ablations: several variants of one config trained and scored in this process, over one or
several seeds, then tabulated with intervals (RSRNet's Table 2, MadisNet with and without E_dom,
RainNet's IN against RAIN).

    jirl ablation --config rsrnet:quick --workdir runs/rsrnet_table2
    jirl ablation --config rainnet:quick --seeds 5 --workdir runs/rain_vs_in
    jirl ablation --config rsrnet:quick --variants row2,row9 --seeds 0,1,2 --reference row9

(also `python -m jirl.ablation`). Each variant V is the config `FILE:<variant>,V` (the file's
ROWS, e.g. rsrnet's row1..row9) with every --config.key=value override applied. Without
`seeds` it trains once, with `config.seed`, into `<workdir>/<V>`; with `seeds` (a count N for
seeds 0..N-1, or a list) once per seed into `<workdir>/<V>/seed<k>` with `config.seed = k`,
which seeds the initialization, the data order and augmentation and dropout (the embedded data
set itself is `config.data.seed`'s and stays fixed). Each run is scored on the test split
(`evaluate_checkpoint`, per-iteration masks included when the model has them) into its
`eval.json`; a run whose eval.json exists is not run again, so an interrupted ablation resumes
run by run. `jirl.ablation.report.write_report` then writes `<workdir>/table.md` (mean ± std
over seeds; 95 % intervals and the paired difference of every arm from the reference arm, with
a verdict; per epoch when the runs validated during training), `table.json`, and with
matplotlib (`pip install 'jirl[plots]'`) `chart.png` and `curves.png`. The reference arm is
`--reference`, else the config file's `REFERENCE`, else the first variant.

Whole configs compare the same way, each arm named by its config (`named_arms`):

    jirl ablation --arm dirl:quick --arm unet:quick --arm madisnet:quick,unet --seeds 3
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
from jirl.ablation.report import (
    bar_chart,
    curve_chart,
    epoch_scores,
    epoch_table,
    interval_table,
    iteration_table,
    primary_mask,
    table,
    task_of,
    write_report,
)
from jirl.models import resolve_spec
from jirl.runtime import configs
from jirl.training.evaluate import evaluate_checkpoint
from jirl.training.loop import train_and_evaluate

__all__ = ["arms", "named_arms", "arm_config", "run_arm", "run_ablation", "parse_seeds", "reference_arm",
           "bar_chart", "curve_chart", "epoch_scores", "epoch_table", "interval_table",
           "iteration_table", "primary_mask", "table", "task_of", "write_report"]

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


def named_arms(arguments: Sequence[str]) -> dict[str, str]:
    """{name: config argument} of whole configs compared as arms (`--arm`): "NAME=ARGUMENT", or
    ARGUMENT named by its file and variants (dirl:quick -> dirl_quick, madisnet:quick,unet ->
    madisnet_quick_unet). Raises ValueError for a name given twice or a config that is not
    there."""
    named: dict[str, str] = {}
    for item in arguments:
        name, equals, argument = item.partition("=")
        if not equals:
            argument = item
            path, variant = configs.split(configs.resolve(item))
            name = "_".join([os.path.splitext(os.path.basename(path))[0],
                             *filter(None, (variant or "").split(","))])
        if not name or name in named or os.sep in name:
            raise ValueError(f"--arm {item!r}: the arm name {name!r} is empty, has a "
                             f"{os.sep!r} or is given twice; name it with NAME=CONFIG")
        named[name] = configs.resolve(argument)
    return named


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
        train_and_evaluate(config, workdir, raise_on_preemption=True)  # preempted: no eval.json
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


def parse_seeds(values: Sequence[str | int]) -> list[int]:
    """`--seeds`: one number N -> seeds 0..N-1; several -> those seeds; none -> [] (one run per
    arm with config.seed). Raises ValueError for anything else."""
    try:
        seeds = [int(v) for v in values]
    except ValueError:
        raise ValueError(f"--seeds takes a count or a list of integers, not {list(values)}") from None
    if len(seeds) == 1:
        if seeds[0] < 1:
            raise ValueError(f"--seeds {seeds[0]}: give a count of at least 1 (or a list)")
        return list(range(seeds[0]))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds lists a seed twice: {seeds}")
    return seeds


def reference_arm(config: str, variants: Sequence[str], reference: str | None = None) -> str:
    """The arm the others are compared with: `reference`, else the config file's REFERENCE, else
    the first variant. Raises ValueError for a reference that is not among the variants."""
    path, _ = configs.split(configs.resolve(config))
    chosen = reference or getattr(configs.load_module(path), "REFERENCE", None)
    if chosen is None or (reference is None and chosen not in variants):
        return variants[0]
    if chosen not in variants:
        raise ValueError(f"--reference {chosen!r} is not one of the variants {list(variants)}")
    return chosen


def run_ablation(config: str | Mapping[str, str], variants: Sequence[str] = (), *, workdir: str,
                 overrides: Mapping[str, Any] | None = None, seeds: Sequence[int] = (),
                 reference: str | None = None, train: bool = True) -> dict[str, dict[int, dict]]:
    """Every arm, once per seed (`seeds`; none: once with config.seed), trained, scored and
    written by `run_arm`, then `write_report`; returns {variant: {seed: eval.json}}. The arms
    are the variants of `config` (`arms`) or, for a mapping, {name: config argument}
    (`named_arms`), the first of which is the default reference. `train=False` tabulates the
    runs already scored and trains nothing (an ablation still running elsewhere); raises
    ValueError when the reference has none."""
    if isinstance(config, str):
        arguments = arms(config, variants)
        ref = reference_arm(config, list(arguments), reference)
    else:
        arguments = dict(config)
        ref = reference or next(iter(arguments))
        if ref not in arguments:
            raise ValueError(f"--reference {ref!r} is not one of the arms {list(arguments)}")
    results: dict[str, dict[int, dict]] = {}
    curves: dict[str, dict[int, dict]] = {}
    for variant, argument in arguments.items():
        results[variant], curves[variant] = {}, {}
        for seed in seeds or [None]:
            arm_overrides = {**(overrides or {}), **({} if seed is None else {"seed": seed})}
            arm = arm_config(argument, arm_overrides)
            run_dir = os.path.join(workdir, variant, *([] if seed is None else [f"seed{seed}"]))
            if not train and not os.path.exists(os.path.join(run_dir, RESULTS)):
                continue
            results[variant][int(arm.seed)] = run_arm(arm, run_dir)
            curves[variant][int(arm.seed)] = epoch_scores(run_dir)
    if not results[ref]:
        raise ValueError(f"the reference {ref!r} has no scored run in {workdir}")
    results = {v: runs for v, runs in results.items() if runs}
    curves = {v: curves[v] for v in results}
    if jax.process_index() == 0:
        write_report(results, curves, workdir, ref)
    return results

"""What a model is asked to do, and how it is scored: localization and harmonization.

Each `ModelSpec` names its `Task`; the training loop, evaluation, the ablation and the command
lines read from it what differs between tasks (the eval step, the metrics and the one that picks
the best checkpoint, what evaluation writes), so that code above the models never branches on a
task's name. A new task is one `Task` here and the model files that declare it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jirl import metrics
from jirl.normalization import denormalize

COMPOSITE_BASELINE = "baseline/composite"  # a harmonizer's do-nothing row (the composite itself)


@dataclasses.dataclass(frozen=True)
class Task:
    """name: what eval.json records as "task".
    metrics: the per-image metrics of every scored output, in table order.
    selection: the metric that picks the best checkpoint (higher is better).
    lower_is_better: the metrics where a smaller value is better.
    curve_metrics: the panels of the ablation's per-epoch chart.
    outputs: what evaluation can write per example ("masks" | "images": `--save_<outputs>`).
    mask_baselines: whether the trivial masks (mean training mask, all foreground) are scored
        beside the model (`jirl.training.baselines`).
    batch_keys: the batch entries its train and eval steps read.
    make_eval_step(spec, config, apply_fn) -> eval_step(variables, batch) ->
        ({scored name: per-image metrics}, {name: mask or image}).
    protocol(config) -> the evaluation settings eval.json records beside the scores.
    """

    name: str
    metrics: tuple[str, ...]
    selection: str
    lower_is_better: frozenset[str]
    curve_metrics: tuple[str, ...]
    outputs: str
    mask_baselines: bool
    batch_keys: tuple[str, ...]
    make_eval_step: Callable[..., Callable]
    protocol: Callable[[Any], dict]

    def better(self, metric: str, a: float, b: float) -> bool:
        """Whether score `a` of `metric` is better than `b`."""
        return a < b if metric in self.lower_is_better else a > b


def _localization_eval_step(spec, config, apply_fn: Callable) -> Callable:
    """A localizer's eval step: every `spec.eval_masks` mask scored by the official protocol
    (`config.eval.normalize`: per-image min-max normalization before thresholding at 0.5); the
    second dict also holds the model's unscored pictures (`ModelSpec.eval_images`, returned in
    [0, 1] units, as jirl.inference shows them). Padded rows (`batch["valid"]` False) are masked."""
    per_iteration = bool(config.eval.get("per_iteration", False))
    if per_iteration and spec.step_masks is None:
        raise ValueError(f"config.eval.per_iteration: {spec.name} has no per-iteration masks "
                         "(only iterative models such as rsrnet do)")
    mean, std = config.data.mean, config.data.std

    def eval_step(variables: dict, batch: dict) -> tuple[dict, dict]:
        outputs = apply_fn(variables, batch["image"], train=False)
        masks = spec.eval_masks(outputs)
        if per_iteration:
            masks = {**masks, **spec.step_masks(outputs)}
        per_image = {
            name: metrics.per_image_metrics(
                m, batch["mask"], normalize=config.eval.normalize, valid=batch.get("valid"))
            for name, m in masks.items()
        }
        images = spec.eval_images(outputs) if spec.eval_images is not None else {}
        images = {k: denormalize(v, mean, std) for k, v in images.items()}
        return per_image, {**masks, **images}

    return eval_step


def _harmonization_eval_step(spec, config, apply_fn: Callable) -> Callable:
    """A harmonizer's eval step: the model re-renders `spec.harmonization_inputs(batch)`'s
    composite in its mask, and each `spec.eval_images` image is scored against the real image by
    `metrics.harmonization_metrics` (`config.eval.quantize`: the official 8-bit truncation). With
    `config.eval.baselines` the composite itself is scored too, as COMPOSITE_BASELINE (the
    do-nothing harmonizer). Images are returned in [0, 1]."""
    if config.eval.per_iteration:
        raise ValueError(f"config.eval.per_iteration: {spec.name} is a harmonizer; it has no "
                         "per-iteration masks")
    mean, std = config.data.mean, config.data.std
    quantize = bool(config.eval.get("quantize", True))

    def eval_step(variables: dict, batch: dict) -> tuple[dict, dict]:
        comp, mask, real = spec.harmonization_inputs(batch)
        outputs = apply_fn(variables, comp, train=False, **spec.model_inputs({**batch, "mask": mask}))
        images = {name: denormalize(x, mean, std) for name, x in spec.eval_images(outputs).items()}
        scored = dict(images)
        if config.eval.baselines:
            scored[COMPOSITE_BASELINE] = denormalize(comp, mean, std)
        real01 = denormalize(real, mean, std)
        per_image = {name: metrics.harmonization_metrics(x, real01, mask, quantize=quantize,
                                                         valid=batch.get("valid"))
                     for name, x in scored.items()}
        return per_image, images

    return eval_step


LOCALIZATION = Task(
    name="localization", metrics=metrics.METRIC_NAMES, selection="iou",
    lower_is_better=frozenset(), curve_metrics=("ap", "f1", "iou"), outputs="masks",
    mask_baselines=True, batch_keys=("image", "mask"), make_eval_step=_localization_eval_step,
    protocol=lambda config: {"normalized": bool(config.eval.normalize)})
HARMONIZATION = Task(
    name="harmonization", metrics=metrics.HARMONIZATION_METRIC_NAMES, selection="psnr",
    lower_is_better=frozenset({"mse", "fmse"}), curve_metrics=("mse", "psnr"), outputs="images",
    mask_baselines=False, batch_keys=("image", "mask", "real"),
    make_eval_step=_harmonization_eval_step,
    protocol=lambda config: {"quantized": bool(config.eval.quantize)})
TASKS = {t.name: t for t in (LOCALIZATION, HARMONIZATION)}


def get_task(name: str) -> Task:
    """The task called `name` (as eval.json records it); a clear error lists the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; jirl knows {', '.join(TASKS)}")
    return TASKS[name]


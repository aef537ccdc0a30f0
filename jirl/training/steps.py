"""The jit-compiled training and evaluation steps, generic over the registered models."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jirl import metrics
from jirl.models import ModelSpec
from jirl.training.state import TrainState


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_loss_fn(spec: ModelSpec, config: ml_collections.ConfigDict) -> Callable:
    """loss_fn(params, state, batch) -> (loss, (logs, new BN statistics)): the model in train
    mode on the batch (with the spec's training-only inputs) and its objective."""

    def loss_fn(params, state: TrainState, batch: dict):
        extra = spec.train_inputs(batch) if spec.train_inputs is not None else {}
        outputs, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"],
            train=True, mutable=["batch_stats"], **extra,
        )
        loss, logs = spec.objective(outputs, batch, config.loss)
        return loss, (logs, updates["batch_stats"])

    return loss_fn


def apply_group_gradients(state: TrainState, grads, batch_stats, groups: tuple[str, ...],
                          labels) -> TrainState:
    """`state` with only the parameters of the optimizer groups `groups` updated from `grads`
    (an `optax.multi_transform` over `labels`, the spec's param_labels tree): the other groups'
    parameters and optimizer states are kept as they were (not stepped with zero gradients, which
    would still move Adam's moments and counts). The step counter is not advanced."""
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    inner = {label: (opt_state.inner_states[label] if label in groups
                     else state.opt_state.inner_states[label])
             for label in state.opt_state.inner_states}
    params = jax.tree.map(lambda p, u, label: p + u if label in groups else p,
                          state.params, updates, labels)
    return state.replace(params=params, batch_stats=batch_stats,
                         opt_state=opt_state._replace(inner_states=inner))


def make_phase_runner(spec: ModelSpec, config: ml_collections.ConfigDict) -> Callable:
    """run(state, batch) -> (state, logs, grads, finite): the `spec.train_phases` of one train
    step in order, each differentiated at the state the previous one left and applied to its own
    groups (`apply_group_gradients`); `grads` holds each phase's gradient. The step counter is
    not advanced and nothing is rolled back: `make_train_step` does both."""
    base_key = jax.random.PRNGKey(config.seed)

    def run(state: TrainState, batch: dict):
        rng = jax.random.fold_in(base_key, state.step)
        labels = spec.param_labels(state.params)
        logs, grads, finite = {}, [], jnp.bool_(True)
        for phase in spec.train_phases:
            (loss, (phase_logs, batch_stats)), g = jax.value_and_grad(
                phase.loss, argnums=1, has_aux=True)(
                state.apply_fn, state.params, state.batch_stats, batch, rng, config.loss)
            finite &= jnp.isfinite(loss) & _all_finite(g)
            state = apply_group_gradients(state, g, batch_stats, phase.groups, labels)
            logs.update(phase_logs, loss=loss)
            logs[f"grad_norm_{phase.name}"] = optax.tree.norm(g)
            grads.append(g)
        return state, logs, grads, finite

    return run


def _phase_train_step(spec: ModelSpec, config: ml_collections.ConfigDict) -> Callable:
    """The train step of a model with `spec.train_phases` (see `make_train_step`)."""
    run = make_phase_runner(spec, config)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        new, logs, _, finite = run(state, batch)
        new = new.replace(step=state.step + 1)
        new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
        return new, dict(logs, finite=finite)

    return train_step


def make_train_step(spec: ModelSpec, config: ml_collections.ConfigDict) -> Callable:
    """train_step(state, batch) -> (state, logs): one supervised step with BN batch statistics,
    or, for a model with `train_phases` (RainNet: discriminator then generator), one update per
    phase in order, each of its own optimizer groups; the dropout/noise key is derived from
    `config.seed` and the step, so a resumed run draws what the uninterrupted one would.

    A step whose loss or gradients are not finite (in any phase) leaves the state unchanged and
    reports `finite = False`; the loop then stops with a clear message, so no NaN reaches a
    checkpoint.
    """
    if spec.train_phases:
        return _phase_train_step(spec, config)
    loss_fn = make_loss_fn(spec, config)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        (loss, (logs, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state, batch)
        finite = jnp.isfinite(loss) & _all_finite(grads)
        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
        new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_state, state)
        logs = dict(logs, loss=loss, grad_norm=optax.tree.norm(grads), finite=finite)
        return new_state, logs

    return train_step


def release_host_memory() -> None:
    """Returns memory that the process freed but glibc's malloc keeps back to the OS (Linux only).

    XLA frees its compiler's working memory after compilation, yet glibc keeps it mapped; on CPU
    the train step's activations are host memory too, so without this they would sit on top of
    it: DIRL's official train step at 224 px, batch 8 peaks at 7.0 GB instead of 7.7 GB.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to release
        pass


def compile_step(jitted: Callable, *args) -> Callable:
    """`jitted` compiled ahead of time for `args`, then `release_host_memory()`."""
    compiled = jitted.lower(*args).compile()
    release_host_memory()
    return compiled


def make_eval_step(spec: ModelSpec, config: ml_collections.ConfigDict,
                   apply_fn: Callable) -> Callable:
    """eval_step(variables, batch) -> ({scored name: per-image metrics}, {name: mask or image}).

    A localizer's masks are scored by AP / F1 / IoU (`make_localization_eval_step`), a
    harmonizer's image by MSE / PSNR / fMSE (`make_harmonization_eval_step`). Padded rows
    (`batch["valid"]` False) are masked.
    """
    if spec.task == "harmonization":
        return make_harmonization_eval_step(spec, config, apply_fn)
    if spec.task != "localization":
        raise ValueError(f"{spec.name}: unknown task {spec.task!r}")
    return make_localization_eval_step(spec, config, apply_fn)


def make_localization_eval_step(spec: ModelSpec, config: ml_collections.ConfigDict,
                                apply_fn: Callable) -> Callable:
    """The eval step of a localizer: every `spec.eval_masks` mask scored by the official
    protocol (`config.eval.normalize`: per-image min-max normalization before thresholding at
    0.5); the second dict also holds the model's unscored pictures (`ModelSpec.eval_images`,
    normalized like the input: returned in [0, 1] units, as jirl.inference shows them)."""
    per_iteration = bool(config.eval.get("per_iteration", False))
    mean = jnp.asarray(config.data.mean, jnp.float32)
    std = jnp.asarray(config.data.std, jnp.float32)
    if per_iteration and spec.step_masks is None:
        raise ValueError(f"config.eval.per_iteration: {spec.name} has no per-iteration masks "
                         "(only iterative models such as rsrnet do)")

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
        images = {k: v.astype(jnp.float32) * std + mean for k, v in images.items()}
        return per_image, {**masks, **images}

    return eval_step


COMPOSITE_BASELINE = "baseline/composite"


def make_harmonization_eval_step(spec: ModelSpec, config: ml_collections.ConfigDict,
                                 apply_fn: Callable) -> Callable:
    """The eval step of a harmonizer: the model re-renders `spec.harmonization_inputs(batch)`'s
    composite in its mask, and each `spec.eval_images` image is scored against the real image by
    `metrics.harmonization_metrics` (`config.eval.quantize`: the official 8-bit truncation). With
    `config.eval.baselines` the composite itself is scored too, as "baseline/composite" (the
    do-nothing harmonizer). Images are returned in [0, 1]."""
    if config.eval.per_iteration:
        raise ValueError(f"config.eval.per_iteration: {spec.name} is a harmonizer; it has no "
                         "per-iteration masks")
    mean = jnp.asarray(config.data.mean, jnp.float32)
    std = jnp.asarray(config.data.std, jnp.float32)
    quantize = bool(config.eval.get("quantize", True))

    def eval_step(variables: dict, batch: dict) -> tuple[dict, dict]:
        comp, mask, real = spec.harmonization_inputs(batch)
        outputs = apply_fn(variables, comp, train=False, **spec.model_inputs({**batch, "mask": mask}))
        images = {name: x.astype(jnp.float32) * std + mean
                  for name, x in spec.eval_images(outputs).items()}
        real01 = real * std + mean
        scored = dict(images)
        if config.eval.baselines:
            scored[COMPOSITE_BASELINE] = comp * std + mean
        per_image = {name: metrics.harmonization_metrics(x, real01, mask, quantize=quantize,
                                                         valid=batch.get("valid"))
                     for name, x in scored.items()}
        return per_image, images

    return eval_step

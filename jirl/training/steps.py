"""The jit-compiled training and evaluation steps, generic over the registered models."""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

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


def _partition(params, labels, groups: tuple[str, ...]) -> tuple[Any, Any]:
    """(own, rest): `params` split by optimizer group, None standing for the leaves of the other
    part, so that a gradient with respect to `own` computes nothing for `rest`."""
    own = jax.tree.map(lambda p, label: p if label in groups else None, params, labels)
    rest = jax.tree.map(lambda p, label: None if label in groups else p, params, labels)
    return own, rest


def _merge(own, rest):
    """The tree that `_partition` split; `own`'s None leaves are taken from `rest`."""
    return jax.tree.map(lambda o, r: r if o is None else o, own, rest,
                        is_leaf=lambda x: x is None)


def _check_phases(spec: ModelSpec) -> None:
    """A forward shared by the phases is differentiated once, at the step's initial params:
    that is the gradient a later phase needs only when no earlier phase updated the same
    groups."""
    if spec.train_forward is None:
        if any(phase.through_forward for phase in spec.train_phases):
            raise ValueError(f"{spec.name}: a phase differentiates through the shared forward, "
                             "but the spec has no train_forward")
        return
    seen: set[str] = set()
    for phase in spec.train_phases:
        if seen & set(phase.groups):
            raise ValueError(f"{spec.name}: phase {phase.name!r} updates groups "
                             f"{sorted(seen & set(phase.groups))} that an earlier phase updated; "
                             "with a shared train_forward the phases' groups must be disjoint")
        seen |= set(phase.groups)


def make_phase_runner(spec: ModelSpec, config: ml_collections.ConfigDict) -> Callable:
    """run(state, batch) -> (state, logs, grads, finite): the `spec.train_phases` of one train
    step in order, after the spec's `train_forward` (run once, its pullback kept for the phases
    that differentiate through it). Each phase is differentiated with respect to its own groups'
    parameters only, at the state the previous one left, and applied to them
    (`apply_group_gradients`); `grads` holds each phase's gradient (zeros outside its groups).
    The step counter is not advanced and nothing is rolled back: `make_train_step` does both."""
    _check_phases(spec)
    base_key = jax.random.PRNGKey(config.seed)

    def run(state: TrainState, batch: dict):
        rng = jax.random.fold_in(base_key, state.step)
        labels = spec.param_labels(state.params)
        shared = pullback = None
        if spec.train_forward is not None:
            shared, pullback, batch_stats = jax.vjp(
                lambda p: spec.train_forward(state.apply_fn, p, state.batch_stats, batch, rng),
                state.params, has_aux=True)
            state = state.replace(batch_stats=batch_stats)
        logs, grads, finite = {}, [], jnp.bool_(True)
        for phase in spec.train_phases:
            own, rest = _partition(state.params, labels, phase.groups)

            def loss(own, shared, state=state, rest=rest, phase=phase):
                return phase.loss(state.apply_fn, _merge(own, rest), state.batch_stats, batch,
                                  rng, config.loss, shared)

            if phase.through_forward:
                (value, (phase_logs, batch_stats)), (g, g_shared) = jax.value_and_grad(
                    loss, argnums=(0, 1), has_aux=True)(own, shared)
                g_forward, _ = _partition(pullback(g_shared)[0], labels, phase.groups)
                g = jax.tree.map(jnp.add, g, g_forward)
            else:
                (value, (phase_logs, batch_stats)), g = jax.value_and_grad(loss, has_aux=True)(
                    own, jax.lax.stop_gradient(shared))
            g = _merge(g, jax.tree.map(jnp.zeros_like, rest))
            finite &= jnp.isfinite(value) & _all_finite(g)
            state = apply_group_gradients(state, g, batch_stats, phase.groups, labels)
            logs.update(phase_logs, loss=value)
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
    it (benchmarks/train_step.py reports the peak).
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
    """eval_step(variables, batch) -> ({scored name: per-image metrics}, {name: mask or image}):
    the eval step of the model's task (`spec.task.make_eval_step`: a localizer's masks scored by
    AP / F1 / IoU, a harmonizer's image by MSE / PSNR / fMSE). Padded rows (`batch["valid"]`
    False) are masked."""
    return spec.task.make_eval_step(spec, config, apply_fn)

"""Optimizer and learning-rate schedule (optax)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections
import optax

from jirl.models import FROZEN_GROUP as FROZEN


def lr_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate per train step, stepped once per epoch as the official schedulers are:
    `MultiStepLR` (`cfg.schedule == "multistep"`) or the pix2pix-family "linear" `LambdaLR`,
    1 - max(0, epoch + 1 - constant_epochs) / (linear_decay_epochs + 1) for epoch 0, 1, ..."""
    schedule = cfg.get("schedule", "multistep")
    if schedule == "linear":
        def linear(step):
            epoch = step // steps_per_epoch
            decayed = jnp.maximum(0, epoch + 1 - cfg.constant_epochs)
            return cfg.learning_rate * (1.0 - decayed / (cfg.linear_decay_epochs + 1.0))

        return linear
    if schedule != "multistep":
        raise ValueError(f"config.optimizer.schedule={schedule!r}; use 'multistep' or 'linear'")
    boundaries: dict[int, float] = {}
    for epoch in cfg.decay_epochs:
        step = int(epoch) * steps_per_epoch
        boundaries[step] = boundaries.get(step, 1.0) * cfg.decay_factor
    return optax.piecewise_constant_schedule(cfg.learning_rate, boundaries)


def adam_l2(cfg: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    """`torch.optim.Adam(lr, betas, eps, weight_decay)`: L2 decay added to the gradient, not AdamW."""
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay) if cfg.weight_decay else optax.identity(),
        optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        optax.scale_by_learning_rate(lr_schedule(cfg, steps_per_epoch)),
    )


def group_config(cfg: ml_collections.ConfigDict, label: str) -> ml_collections.ConfigDict:
    """`cfg` with the overrides of `cfg.groups[label]` (if any) applied."""
    merged = ml_collections.ConfigDict({k: v for k, v in cfg.items() if k != "groups"})
    overrides = cfg.get("groups", {}).get(label, {}) or {}
    unknown = sorted(set(overrides) - set(merged))
    if unknown:
        raise ValueError(f"config.optimizer.groups.{label} has unknown keys {unknown}; "
                         f"it overrides keys of config.optimizer ({sorted(merged)})")
    merged.update(dict(overrides))
    return merged


def make_optimizer(cfg: ml_collections.ConfigDict, steps_per_epoch: int,
                   spec: Any = None) -> optax.GradientTransformation:
    """One `adam_l2` for every parameter; or, for a model whose ModelSpec `spec` has parameter
    groups (`param_labels`, `param_groups`), one per group (MadisNet's three torch optimizers),
    each with its `config.optimizer.groups.<group>` overrides; the group "frozen" gets
    `optax.set_to_zero()`: no update and no optimizer state."""
    if spec is None or spec.param_labels is None:
        return adam_l2(cfg, steps_per_epoch)
    unknown = sorted(set(cfg.get("groups", {})) - set(spec.param_groups))
    if unknown:
        raise ValueError(f"config.optimizer.groups names {unknown}, but the {spec.name} parameter "
                         f"groups are {sorted(set(spec.param_groups) - {FROZEN})}")
    transforms = {label: optax.set_to_zero() if label == FROZEN
                  else adam_l2(group_config(cfg, label), steps_per_epoch)
                  for label in spec.param_groups}
    return optax.multi_transform(transforms, spec.param_labels)

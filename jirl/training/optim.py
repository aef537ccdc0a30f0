"""Optimizer and learning-rate schedule (optax)."""

from __future__ import annotations

import ml_collections
import optax


def lr_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """`torch.optim.lr_scheduler.MultiStepLR` stepped once per epoch, expressed in train steps."""
    boundaries: dict[int, float] = {}
    for epoch in cfg.decay_epochs:
        step = int(epoch) * steps_per_epoch
        boundaries[step] = boundaries.get(step, 1.0) * cfg.decay_factor
    return optax.piecewise_constant_schedule(cfg.learning_rate, boundaries)


def make_optimizer(cfg: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.GradientTransformation:
    """`torch.optim.Adam(lr, betas, eps, weight_decay)`: L2 decay added to the gradient, not AdamW."""
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay) if cfg.weight_decay else optax.identity(),
        optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
        optax.scale_by_learning_rate(lr_schedule(cfg, steps_per_epoch)),
    )

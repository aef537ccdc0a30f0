"""Train state: params, BatchNorm statistics, optimizer state and step, as one pytree."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
    """`flax.training.train_state.TrainState` plus the `batch_stats` collection."""

    batch_stats: Any = None

    def variables(self) -> dict:
        """The variables `apply_fn` takes in evaluation mode."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, variables: dict
) -> TrainState:
    """A fresh TrainState at step 0 from initialized (or imported) variables."""
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"], tx=tx,
        batch_stats=variables["batch_stats"],
    )

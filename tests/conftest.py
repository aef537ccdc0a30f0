"""Shared test helpers (pytest fixtures)."""

from collections.abc import Callable

import chex
import jax
import numpy as np
import pytest

# Numeric comparisons against float32 references assume float32 matrix products: on GPUs XLA
# otherwise uses TF32 (10 mantissa bits) for float32 convolutions and dots. No effect on CPU.
jax.config.update("jax_default_matmul_precision", "highest")


def _params_without_gradient(model, variables: dict, image, loss_of_outputs: Callable) -> list[str]:
    """Paths of the parameters whose train-mode gradient of `loss_of_outputs(outputs)` is all zero."""

    def loss(params):
        outputs, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, image,
                                 train=True, mutable=["batch_stats"])
        return loss_of_outputs(outputs)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    chex.assert_tree_all_finite(grads)
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    return [jax.tree_util.keystr(k) for k, g in flat if not np.any(np.asarray(g))]


@pytest.fixture
def params_without_gradient() -> Callable:
    """(model, variables, image, loss_of_outputs) -> paths of parameters with no gradient."""
    return _params_without_gradient

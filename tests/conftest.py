"""Shared test helpers (pytest fixtures)."""

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable

# Tests compile many small programs and run each a few times: XLA:CPU's cheaper backend
# optimization halves the suite's wall time (the same flags jirl_testing gives subprocesses).
# Set before JAX creates its CPU backend; a caller's own XLA_FLAGS are kept.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0",
     "--xla_llvm_disable_expensive_passes=true"]).strip()

# One persistent XLA compilation cache for the whole run: the tests build the same tiny models
# again and again (new jit objects, identical programs), in process and in the train.py / eval.py
# subprocesses they start. The first process to load this file (pytest's controller) makes the
# folder and removes it at exit; xdist workers and subprocesses inherit the variables.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="jirl-test-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.2",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import chex  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

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


# The files whose tests take longest (minutes: several subprocesses, each compiling), longest
# first. CI runs `pytest -n 2 --dist loadfile`, which hands whole files to the two workers in
# collection order: starting with the longest keeps one worker from being left alone with a
# long file at the end (longest-processing-time-first scheduling).
LONGEST_FIRST = ("test_madisnet.py", "test_resume.py", "test_rainnet.py", "test_entry_points.py",
                 "test_distributed.py", "test_docs.py", "test_gcs.py",
                 "test_predict.py", "test_demo.py", "test_cli.py", "test_loop.py", "test_wheel.py",
                 "test_bf16.py", "test_training.py", "test_ablation.py", "test_convert.py")


def pytest_collection_modifyitems(config, items):
    """Runs the files of LONGEST_FIRST first, in that order; the rest after, as collected."""
    del config
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept

"""Device mesh and data placement: batch sharded on a `data` axis, state replicated."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
DEVICE_KEYS = ("image", "mask", "real", "valid")


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all (global) devices."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the `data` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Replicated on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    """Raises a clear error when the global batch cannot be split evenly over the devices."""
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(
            f"batch_size={global_batch} is not divisible by the {n} devices of the mesh; "
            f"use a multiple of {n} (e.g. --config.batch_size={max(n, global_batch // n * n)})")
    if global_batch % jax.process_count():
        raise ValueError(
            f"batch_size={global_batch} is not divisible by {jax.process_count()} processes")


def put_batch(batch: dict, mesh: Mesh, keys=DEVICE_KEYS) -> dict:
    """Process-local numpy batch -> global jax.Arrays sharded over the `data` axis."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(batch[k]))
        for k in keys if k in batch
    }

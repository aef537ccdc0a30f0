"""Multi-host start-up: `jax.distributed.initialize` under a launcher, nothing for one process.

Call `initialize()` before anything touches devices (`jax.devices()`, a jitted call, a
`device_put`). It joins the processes of one job into a single JAX runtime when

* explicit values are given (`--coordinator_address`, `--num_processes`, `--process_id`, or
  the environment variables `JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID`),
* or `jax.distributed.initialize()` itself detects a cluster launcher (a Cloud TPU pod slice on
  GCE or GKE, a SLURM `srun` step, an Open MPI `mpirun`, Kubernetes with the `kubernetes` package).

A plain single process (a laptop, one GPU machine, `python -m pytest`) is left alone: JAX's public
`initialize()` raises "coordinator_address should be defined" when it detects no launcher, which
means "one process" here. A SLURM step or `mpirun` with a single task is not initialized either
(`SLURM_NTASKS=1`, `OMPI_COMM_WORLD_SIZE=1`): one task needs no coordinator, and binding its port
would be for nothing. Only public JAX APIs are used.
"""

from __future__ import annotations

import logging
import os

import jax
from absl import flags

log = logging.getLogger(__name__)

# What `jax.distributed.initialize()` raises when no value is given and no launcher is detected.
NO_LAUNCHER_MESSAGE = "coordinator_address should be defined"
# Launchers' own task counts (SLURM, Open MPI): "1" means a single-task job.
TASK_COUNT_VARIABLES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


def define_flags() -> None:
    """--coordinator_address, --num_processes, --process_id (for train.py and eval.py)."""
    flags.DEFINE_string(
        "coordinator_address", None,
        "host:port of process 0, for a multi-process run without a launcher JAX detects "
        "(TPU pod slices, SLURM and Open MPI are detected automatically).")
    flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
    flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")


def single_task_launch() -> bool:
    """True inside a SLURM step or an Open MPI run of one task (nothing to coordinate)."""
    return any(os.environ.get(var, "").strip() == "1" for var in TASK_COUNT_VARIABLES)


def _use_cpu_collectives() -> None:
    """Cross-process collectives on CPU need an implementation (gloo ships with jaxlib).

    Only affects the CPU client; GPU and TPU use their own. An explicit choice (e.g. mpi via
    JAX_CPU_COLLECTIVES_IMPLEMENTATION) is kept.
    """
    if not jax.config.jax_cpu_collectives_implementation:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
    """Joins a multi-process run; returns True when `jax.distributed` was initialized.

    Explicit values win; missing ones are filled in by JAX from the launcher. With neither
    explicit values nor a launcher JAX detects, this does nothing (single process).
    """
    if jax.distributed.is_initialized():
        return True
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
    if not explicit and single_task_launch():
        return False
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes={num_processes}; it must be >= 1")
    if (process_id is not None and num_processes is not None
            and not 0 <= process_id < num_processes):
        raise ValueError(f"process_id={process_id} is not in [0, num_processes={num_processes})")
    previous_collectives = jax.config.jax_cpu_collectives_implementation
    _use_cpu_collectives()
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    except ValueError as e:
        if explicit or NO_LAUNCHER_MESSAGE not in str(e):
            raise
        # No launcher detected: one process. Leave JAX's configuration as it was.
        jax.config.update("jax_cpu_collectives_implementation", previous_collectives)
        return False
    log.info("jax.distributed initialized: process %d of %d (%s)", jax.process_index(),
             jax.process_count(), "explicit values" if explicit else "detected launcher")
    return True


def initialize_from_flags() -> bool:
    """`initialize` with the values of the flags `define_flags` defined."""
    f = flags.FLAGS
    return initialize(f.coordinator_address, f.num_processes, f.process_id)

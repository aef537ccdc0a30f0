"""Multi-host start-up: `jax.distributed.initialize` under a launcher, nothing for one process.

Call `initialize()` before anything touches devices (`jax.devices()`, a jitted call, a
`device_put`). It joins the processes of one job into a single JAX runtime when

* explicit values are given (`--coordinator_address`, `--num_processes`, `--process_id`, or
  the environment variables `JAX_COORDINATOR_ADDRESS` / `JAX_NUM_PROCESSES` / `JAX_PROCESS_ID`),
* or a cluster launcher JAX knows is detected: a Cloud TPU pod slice (GCE or GKE), a SLURM
  `srun` step or an Open MPI `mpirun` with more than one task.

A plain single process (a laptop, one GPU machine, `python -m pytest`) is left alone.
"""

from __future__ import annotations

import logging
import os

import jax
from absl import flags

log = logging.getLogger(__name__)

def define_flags() -> None:
    """--coordinator_address, --num_processes, --process_id (for train.py and eval.py)."""
    flags.DEFINE_string(
        "coordinator_address", None,
        "host:port of process 0, for a multi-process run without a launcher JAX detects "
        "(TPU pod slices, SLURM and Open MPI are detected automatically).")
    flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
    flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")


def detected_cluster() -> str | None:
    """The name of the multi-process launcher JAX would bootstrap from, or None.

    SLURM and Open MPI count only with more than one task: a one-task job needs no
    coordinator (and would otherwise bind a port for nothing).
    """
    try:
        from jax._src.clusters import ClusterEnv
    except ImportError:  # pragma: no cover - private module moved: rely on explicit values
        return None
    for env in ClusterEnv._cluster_types:
        if getattr(env, "opt_in_only_method", False) or not env.name:
            continue
        try:
            if not env.is_env_present():
                continue
            if env.name in ("slurm", "ompi") and env.get_process_count() <= 1:
                continue
        except Exception as e:  # noqa: BLE001 - a broken probe is not a cluster
            log.debug("cluster probe %s failed: %s", env.name, e)
            continue
        return env.name
    return None


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
    explicit values nor a detected launcher this does nothing (single process).
    """
    if jax.distributed.is_initialized():
        return True
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
    cluster = None if explicit else detected_cluster()
    if not (explicit or cluster):
        return False
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes={num_processes}; it must be >= 1")
    if (process_id is not None and num_processes is not None
            and not 0 <= process_id < num_processes):
        raise ValueError(f"process_id={process_id} is not in [0, num_processes={num_processes})")
    _use_cpu_collectives()
    log.info("jax.distributed.initialize(coordinator_address=%s, num_processes=%s, "
             "process_id=%s) [%s]", coordinator_address, num_processes, process_id,
             "explicit" if explicit else cluster)
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return True


def initialize_from_flags() -> bool:
    """`initialize` with the values of the flags `define_flags` defined."""
    f = flags.FLAGS
    return initialize(f.coordinator_address, f.num_processes, f.process_id)

"""Helpers shared by tests that run jirl's command lines in subprocesses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import ml_collections
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def subprocess_env(devices: int = 1, cache_dir: str | None = None, checkout: bool = True) -> dict:
    """Environment for a jirl subprocess on `devices` simulated CPU devices.

    XLA_FLAGS and `jax.distributed` only take effect before JAX starts its backends, hence
    subprocesses. Faster CPU compiles (~20 %), with the same flags for every run compared;
    `cache_dir`: XLA's persistent compilation cache, shared by runs that compile the same step.
    `checkout=False` leaves the repository off PYTHONPATH: jirl is what is installed.
    """
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(
        [
            f
            for f in env.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")
        ]
        + [
            f"--xla_force_host_platform_device_count={devices}",
            "--xla_backend_optimization_level=0",
            "--xla_llvm_disable_expensive_passes=true",
        ]
    )
    env["JAX_PLATFORMS"] = "cpu"
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != ROOT]
    env["PYTHONPATH"] = os.pathsep.join(([ROOT] if checkout else []) + paths)
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    if cache_dir:
        env.update(
            JAX_COMPILATION_CACHE_DIR=str(cache_dir),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    return env


def free_port() -> int:
    """A free TCP port on loopback (for a jax.distributed coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], env: dict, timeout: int = 300, check: bool = True, cwd: str = ROOT):
    """`python *args` in `cwd` (the repository root by default); with `check`, asserts it
    exited 0."""
    proc = subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def run_processes(args_per_process: list[list[str]], env: dict, timeout: int = 300) -> list:
    """Starts one `python *args` per entry at once; returns [(returncode, stdout, stderr)]."""
    procs = [
        subprocess.Popen(
            [sys.executable, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for args in args_per_process
    ]
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            outputs.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outputs


TINY_VGG = (4, 4, 8, 8, 8, 8, 8)


def tiny_dirl_config() -> ml_collections.ConfigDict:
    """configs/dirl.py:quick made narrow enough for unit tests (32 px)."""
    from jirl.configs import dirl as dc

    c = dc.get_config("quick")
    c.model.update(stem_features=4, stage_features=(4, 4, 8, 8, 8), ggd_ch=4)
    c.data.crop_size = 32
    return c


def tiny_rainnet_config() -> ml_collections.ConfigDict:
    """configs/rainnet.py:quick made narrow enough for unit tests (32 px)."""
    from jirl.configs import rainnet as rc

    c = rc.get_config("quick")
    c.model.update(ngf=4, blocks=1, ndf=4, d_strided=2)
    c.data.crop_size = 32
    return c


def tiny_madisnet_config(localizer: str = "dirl", **model) -> ml_collections.ConfigDict:
    """configs/madisnet.py:quick[,localizer] made narrow enough for unit tests (32 px)."""
    from jirl.configs import madisnet as madisnet_config

    c = madisnet_config.get_config("quick" if localizer == "dirl" else f"quick,{localizer}")
    c.model.localizer.update(stem_features=8, stage_features=(8, 8, 16, 16, 16),
                             stage_blocks=(1, 1, 1, 1, 1))
    if localizer == "dirl":
        c.model.localizer.ggd_ch = 4
    c.model.ihdrnet.update(luma_bins=4, splat_layers=2)
    c.model.update(vgg_features=TINY_VGG, style_dim=4, **model)
    c.batch_size = 2
    c.data.crop_size = 32
    return c


def tiny_checkpoint(directory, config, with_config=True, seed=0, drop_data_keys=()):
    """A checkpoint of `config`'s model with random weights, as train.py writes it:
    (step directory, flax module, variables). DIRL's BN statistics are perturbed so that its
    mask varies over the image."""
    from jirl.models import build_model, init_model_variables
    from jirl.runtime.checkpoints import write_model_checkpoint

    _, model = build_model(config)
    variables = jax.device_get(init_model_variables(config, model, seed=seed))
    if config.model.name == "dirl":  # random BN statistics: a mask that varies over the image
        rng = np.random.default_rng(seed)
        variables["batch_stats"] = jax.tree.map(
            lambda x: (x + rng.uniform(0.0, 0.5, x.shape)).astype(x.dtype), variables["batch_stats"])
    meta = {"model": config.model.name}
    if with_config:
        meta["config"] = json.loads(config.to_json_best_effort())
        for key in drop_data_keys:  # a checkpoint from before the key existed
            del meta["config"]["data"][key]
    return write_model_checkpoint(str(directory), variables, meta), model, variables


def stored_variables(step_dir) -> dict:
    """The model variables of a checkpoint, restored as numpy arrays shaped as they are stored."""
    import orbax.checkpoint as ocp

    from jirl.runtime.checkpoints import restore_model

    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(os.path.join(str(step_dir), "model"))
    meta = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta)
    return jax.tree.map(np.asarray, restore_model(str(step_dir), target))

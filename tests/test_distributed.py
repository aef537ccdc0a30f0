"""Data parallelism over a device mesh and over processes (CPU stand-ins for GPUs / TPU hosts).

Each case runs in a subprocess: XLA_FLAGS (the number of CPU devices) and
`jax.distributed.initialize` only take effect before JAX creates its backends.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import chex
import numpy as np
import pytest

from jirl.training import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny DIRL on 32 px crops of 40 px synthetic composites.
TINY_CONFIG = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from configs import dirl as dirl_config

    def tiny_config(data_dir, steps=3):
        c = dirl_config.get_config("quick")
        c.model.stem_features = 4
        c.model.stage_features = (4, 4, 8, 8, 8)
        c.model.stage_blocks = (1, 1, 1, 1, 1)
        c.model.ggd_ch = 4
        c.data.data_dir = data_dir
        c.data.image_size = 40
        c.data.crop_size = 32
        c.data.num_train = 32
        c.data.num_test = 8
        c.data.num_workers = 0
        c.batch_size = 8
        # Adam moves a weight by ~lr * sign(g) whatever |g| is, so weights whose gradient is
        # within float noise of zero may differ by up to 2 * lr per step between two exact
        # computations that only reduce in a different order; lr 1e-5 bounds that by 6e-5
        c.optimizer.learning_rate = 1e-5
        c.num_train_steps = steps
        c.log_every_steps = 1
        c.eval_every_steps = steps
        c.checkpoint_every_steps = steps
        c.eval.batch_size = 8
        return c
""")


def _env(devices: int = 1) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(
        [f for f in env.get("XLA_FLAGS", "").split()
         if not f.startswith("--xla_force_host_platform_device_count")]
        + [f"--xla_force_host_platform_device_count={devices}",
           # faster CPU compiles (~20 %); every run compared here uses the same flags
           "--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"])
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    return env


def _script(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(TINY_CONFIG.format(root=ROOT) + textwrap.dedent(body))
    return str(path)


def _run(args, env, timeout=240):
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _free_port() -> int:
    try:
        import portpicker

        return portpicker.pick_unused_port()
    except ImportError:  # pragma: no cover
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


# --- one process, a mesh of 8 CPU devices ------------------------------------------------------

SHARDED_STEP = """
import chex
import jax
import numpy as np
import optax
from jirl.training import mesh as jmesh
from jirl.models import build_model, init_model_variables
from jirl.training.state import create_train_state
from jirl.training.steps import make_train_step

assert jax.device_count() == 8, jax.devices()
config = tiny_config(data_dir="unused")
spec, model = build_model(config)
variables = init_model_variables(config, model)
# SGD with learning rate 1: params after the step = params - gradients, so comparing the
# updated params compares the gradients themselves (Adam's first step is ~ lr * sign(g)).
state0 = create_train_state(model, optax.sgd(1.0), variables)
rng = np.random.default_rng(0)
masks = (rng.random((8, 32, 32, 1)) < 0.3).astype(np.float32)
batch = {"image": rng.normal(size=(8, 32, 32, 3)).astype(np.float32), "mask": masks,
         "real": rng.normal(size=(8, 32, 32, 3)).astype(np.float32)}

def one_step(devices):
    mesh = jmesh.make_mesh(devices)
    jmesh.check_batch_size(8, mesh)
    repl = jmesh.replicated(mesh)
    state = jax.device_put(state0, repl)
    step = jax.jit(make_train_step(spec, config), out_shardings=(repl, repl))
    sharded = jmesh.put_batch(batch, mesh, keys=("image", "mask", "real"))
    assert len(sharded["image"].sharding.device_set) == len(devices)
    new_state, logs = step(state, sharded)
    return jax.device_get((new_state.params, new_state.batch_stats, logs))

p8, bs8, logs8 = one_step(jax.devices())
p1, bs1, logs1 = one_step(jax.devices()[:1])
assert bool(logs8["finite"]) and bool(logs1["finite"])
chex.assert_trees_all_close(logs8, logs1, rtol=1e-5, atol=1e-5)
chex.assert_trees_all_close(p8, p1, rtol=1e-5, atol=1e-5)
chex.assert_trees_all_close(bs8, bs1, rtol=1e-5, atol=1e-5)
# the BN running statistics did move (the step used batch statistics, synchronized)
moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), bs8, variables["batch_stats"])
assert max(jax.tree.leaves(moved)) > 1e-3, moved

try:
    jmesh.check_batch_size(12, jmesh.make_mesh())
except ValueError as e:
    assert "batch_size=12 is not divisible by the 8 devices" in str(e), e
else:
    raise AssertionError("batch 12 on 8 devices was accepted")
print("LOSS", float(logs8["loss"]), float(logs1["loss"]))
"""


def test_sharded_step_over_8_devices_equals_one_device(tmp_path):
    proc = _run([_script(tmp_path, "sharded_step.py", SHARDED_STEP)], _env(devices=8))
    assert "LOSS" in proc.stdout


# --- two processes on loopback -----------------------------------------------------------------

TRAIN = """
import argparse, json
parser = argparse.ArgumentParser()
parser.add_argument("--workdir")
parser.add_argument("--data_dir")
parser.add_argument("--coordinator_address")
parser.add_argument("--num_processes", type=int)
parser.add_argument("--process_id", type=int)
a = parser.parse_args()

from jirl.training import distributed
distributed.initialize(a.coordinator_address, a.num_processes, a.process_id)
import jax
from jirl.training import loop
print("PROCESS", jax.process_index(), jax.process_count(), jax.device_count(), flush=True)
results = loop.train_and_evaluate(tiny_config(a.data_dir), a.workdir)
print("RESULTS", json.dumps(results["mask"]["all"]))
"""


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def test_two_processes_match_one_process(tmp_path):
    data_dir = str(tmp_path / "data")
    script = _script(tmp_path, "train.py", TRAIN)
    # one process with the same global batch (this also prepares the data once)
    one = str(tmp_path / "one")
    ref = json.loads(_run([script, "--workdir", one, "--data_dir", data_dir], _env())
                     .stdout.split("RESULTS", 1)[1])

    two = str(tmp_path / "two")
    address = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen(
        [sys.executable, script, "--workdir", two, "--data_dir", data_dir,
         "--coordinator_address", address, "--num_processes", "2", "--process_id", str(i)],
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        for i in range(2)]
    outputs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outputs.append((p.returncode, out, err))
    for i, (rc, out, err) in enumerate(outputs):
        assert rc == 0, f"process {i}:\n{out[-3000:]}\n{err[-6000:]}"
        assert f"PROCESS {i} 2 2" in out, out

    np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-5, atol=1e-5)
    assert len(_losses(two)) == 3
    # only process 0 writes logs: one record per step, not two
    with open(os.path.join(two, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f if '"loss"' in line]
    assert steps == [1, 2, 3]
    # validation over both processes' halves of the test split matches the one-process run
    res = [json.loads(o[1].split("RESULTS", 1)[1]) for o in outputs]
    assert res[0] == res[1] and res[0]["count"] == ref["count"] == 8
    for k in ("ap", "f1", "iou"):
        assert abs(res[0][k] - ref[k]) < 1e-3, (k, res[0], ref)

    # the checkpoint saved collectively by both processes restores in one process, equal to
    # the one-process run's
    from jirl.training import checkpoints as ckpt

    step_two = ckpt.resolve_checkpoint(os.path.join(two, "checkpoints"))
    step_one = ckpt.resolve_checkpoint(os.path.join(one, "checkpoints"))
    assert os.path.basename(step_two) == "3"
    assert ckpt.read_meta(step_two)["data_iterator"]["process_count"] == 2
    # (see tiny_config's learning rate for the bound)
    saved_one = _model_target(step_one)
    chex.assert_trees_all_close(_model_target(step_two), saved_one, rtol=1e-3, atol=1e-4)
    # ... and through jirl's own restore path (what eval.py on one machine does)
    chex.assert_trees_all_close(ckpt.restore_model(step_two, saved_one), saved_one,
                                rtol=1e-3, atol=1e-4)


def _model_target(step_dir):
    """The stored model tree, restored onto this process's first device (any saved topology)."""
    import jax
    import orbax.checkpoint as ocp

    ckptr = ocp.StandardCheckpointer()
    try:
        path = os.path.join(step_dir, "model")
        meta = ckptr.metadata(path)
        meta = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              meta)
        return jax.tree.map(np.asarray, ckptr.restore(path, target))
    finally:
        ckptr.close()


# --- initialize() -------------------------------------------------------------------------------

def test_initialize_does_nothing_for_a_plain_process(monkeypatch):
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID",
              "SLURM_STEP_NODELIST", "OMPI_MCA_orte_hnp_uri"):
        monkeypatch.delenv(k, raising=False)
    called = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize",
                        lambda **kw: called.append(kw))
    monkeypatch.setattr(distributed.jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed, "detected_cluster", lambda: None)
    assert distributed.initialize() is False
    assert called == []


def test_initialize_passes_explicit_values_and_env(monkeypatch):
    called = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize",
                        lambda **kw: called.append(kw))
    monkeypatch.setattr(distributed.jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed, "detected_cluster", lambda: None)
    assert distributed.initialize("10.0.0.1:1234", 4, 2) is True
    assert called[-1] == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                          "process_id": 2}
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert distributed.initialize() is True
    assert called[-1] == {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
    with pytest.raises(ValueError, match="process_id=3 is not in"):
        distributed.initialize("h:1", 2, 3)


def test_initialize_uses_a_detected_launcher(monkeypatch):
    called = []
    monkeypatch.setattr(distributed.jax.distributed, "initialize",
                        lambda **kw: called.append(kw))
    monkeypatch.setattr(distributed.jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed, "detected_cluster", lambda: "slurm")
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.initialize() is True
    assert called == [{"coordinator_address": None, "num_processes": None, "process_id": None}]


def test_one_task_slurm_step_is_not_a_cluster(monkeypatch):
    env = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node1", "SLURM_NTASKS": "1",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert distributed.detected_cluster() != "slurm"
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert distributed.detected_cluster() == "slurm"

"""Data parallelism over a device mesh and over processes (CPU stand-ins for GPUs / TPU hosts).

Each case runs in a subprocess: XLA_FLAGS (the number of CPU devices) and
`jax.distributed.initialize` only take effect before JAX creates its backends.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from jirl_testing import free_port, run_processes, subprocess_env

from jirl.runtime import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny DIRL on 32 px crops of 40 px synthetic composites.
TINY_CONFIG = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from jirl.configs import dirl as dirl_config

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
        # large enough that every step moves the params far more than float noise between two
        # exact computations that only reduce in a different order (see the 2-process test)
        c.optimizer.learning_rate = 1e-3
        c.num_train_steps = steps
        c.log_every_steps = 1
        c.eval_every_steps = steps
        c.checkpoint_every_steps = steps
        c.eval.batch_size = 8
        return c
""")


def _env(devices: int = 1) -> dict:
    return subprocess_env(devices)


def _script(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(TINY_CONFIG.format(root=ROOT) + textwrap.dedent(body))
    return str(path)


def _run(args, env, timeout=240):
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


# --- one process, a mesh of 8 CPU devices ------------------------------------------------------

SHARDED_STEP = """
import chex
import jax
import numpy as np
import optax
from jirl.runtime import mesh as jmesh
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
parser.add_argument("--steps", type=int, default=3)
a = parser.parse_args()

from jirl.runtime import distributed
distributed.initialize(a.coordinator_address, a.num_processes, a.process_id)
import jax
from jirl.training import loop
print("PROCESS", jax.process_index(), jax.process_count(), jax.device_count(), flush=True)
results = loop.train_and_evaluate(tiny_config(a.data_dir, a.steps), a.workdir)
print("RESULTS", json.dumps(results["mask"]["all"] if results else None))
"""


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


STEPS = 6


def _preempted_pair(args_per_process: list[list[str]], workdir: str) -> int:
    """Starts the pair, sends SIGTERM to process 1 only once step 1 is logged; asserts that
    both saved the same step before the end and exited 0; returns that step."""
    procs = [subprocess.Popen([sys.executable, *args], env=_env(), cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for args in args_per_process]
    metrics = os.path.join(workdir, "metrics.jsonl")
    try:
        deadline = time.monotonic() + 300
        while not (os.path.exists(metrics) and _losses(workdir)):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "the run did not reach step 1"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGTERM)  # the notice reaches process 1 only
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, (out, err)) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"process {i}:\n{out[-2000:]}\n{err[-4000:]}"
    stopped = [int(out.split("saved a checkpoint at step ")[1].split(";")[0])
               for out, _ in outputs]
    assert stopped[0] == stopped[1] < STEPS, outputs
    print(f"both processes saved step {stopped[0]} of {STEPS}")
    return stopped[0]


def test_two_processes_match_one_process_through_a_preemption(tmp_path):
    """Two processes, each reading half of every global batch, train exactly as one process,
    even when a preemption notice (SIGTERM) reaches only one of them mid-run.

    The preemption: both processes agree on the step (JAX's preemption sync), save it
    collectively and exit 0; the resumed pair ends where the uninterrupted one-process run does.
    The proof that gradients are reduced over both processes' rows: after 6 Adam steps at lr 1e-3
    the params moved by ~lr per step, and all but a few of them (near-zero gradients, see below)
    moved exactly as in the 1-process run. Were each process to step on its own half (no
    cross-process reduction), to read the same rows as the other, to skip the update, or to
    resume from the wrong step or data position, most params would differ by the order of the
    update itself.
    """
    data_dir = str(tmp_path / "data")
    script = _script(tmp_path, "train.py", TRAIN)
    steps = ["--steps", str(STEPS)]
    # one process with the same global batch (this also prepares the data once)
    one = str(tmp_path / "one")
    ref = json.loads(_run([script, "--workdir", one, "--data_dir", data_dir, *steps], _env())
                     .stdout.split("RESULTS", 1)[1])

    two = str(tmp_path / "two")

    def pair() -> list[list[str]]:
        address = f"127.0.0.1:{free_port()}"
        return [[script, "--workdir", two, "--data_dir", data_dir, "--coordinator_address",
                 address, "--num_processes", "2", "--process_id", str(i), *steps]
                for i in range(2)]

    stopped = _preempted_pair(pair(), two)
    from jirl.runtime import checkpoints as ckpt

    checkpointer = ckpt.Checkpointer(two)
    assert checkpointer.latest_step() == stopped
    checkpointer.close()

    outputs = run_processes(pair(), _env())
    for i, (rc, out, err) in enumerate(outputs):
        assert rc == 0, f"process {i}:\n{out[-3000:]}\n{err[-6000:]}"
        assert f"PROCESS {i} 2 2" in out and f"at step {stopped}" in out, out

    # the same loss at every step (steps after the first see the updated params)
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-4)
    assert len(_losses(two)) == STEPS
    # only process 0 writes logs: one record per step, not two, none repeated by the resume
    with open(os.path.join(two, "metrics.jsonl")) as f:
        logged = [json.loads(line)["step"] for line in f if '"loss"' in line]
    assert logged == list(range(1, STEPS + 1))
    # validation over both processes' halves of the validation split matches the 1-process run
    res = [json.loads(o[1].split("RESULTS", 1)[1]) for o in outputs]
    assert res[0] == res[1] and res[0]["count"] == ref["count"]
    for k in ("ap", "f1", "iou"):
        assert abs(res[0][k] - ref[k]) < 1e-3, (k, res[0], ref)

    # the checkpoint saved collectively by both processes restores in one process, and its
    # update from the initial params equals the one-process run's
    from jirl.models import build_model, init_model_variables

    step_two = ckpt.resolve_checkpoint(os.path.join(two, "checkpoints"))
    step_one = ckpt.resolve_checkpoint(os.path.join(one, "checkpoints"))
    assert os.path.basename(step_two) == str(STEPS)
    assert ckpt.read_meta(step_two)["data_iterator"]["process_count"] == 2
    namespace: dict = {}
    exec(TINY_CONFIG.format(root=ROOT), namespace)
    config = namespace["tiny_config"](data_dir, STEPS)
    _, model = build_model(config)
    initial = _flat(jax.device_get(init_model_variables(config, model))["params"])
    saved_one = _model_target(step_one)
    update_one = _flat(saved_one["params"]) - initial
    update_two = _flat(_model_target(step_two)["params"]) - initial
    # every param moved (6 Adam steps of ~lr each, far above float noise)...
    assert np.median(np.abs(update_one)) > 1e-3, np.median(np.abs(update_one))
    # ... and the two runs' updates agree. Adam's step is ~lr * sign(g) whatever |g| is, so a
    # param whose gradient is within float noise of zero may step either way when the reduction
    # order changes: a few entries differ by up to ~lr; every other one agrees to float noise.
    diff = np.abs(update_two - update_one)
    differing = float(np.mean(diff > 1e-2 * np.abs(update_one) + 1e-6))
    median_ratio = float(np.median(diff) / np.median(np.abs(update_one)))
    print(f"2-process vs 1-process update: {differing:.2%} of params differ by > 1 %, "
          f"median |diff| / median |update| = {median_ratio:.1e}")
    assert differing < 0.02 and median_ratio < 1e-3, (differing, median_ratio)
    # ... also through jirl's own restore path (what eval.py on one machine does)
    restored = ckpt.restore_model(step_two, saved_one)
    np.testing.assert_allclose(_flat(restored["params"]) - initial, update_two, atol=1e-7)


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


# --- initialize() ---------------------------------------------------------------------------

_LAUNCHER_ENV = (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE",
)


@pytest.fixture
def fake_jax_distributed(monkeypatch):
    """Records calls of `jax.distributed.initialize`; `outcome[0]` is what it does (None: succeed,
    an exception: raise it), as JAX's public function does when no launcher is detected."""
    for k in _LAUNCHER_ENV:
        monkeypatch.delenv(k, raising=False)
    calls, outcome = [], [None]

    def initialize(**kwargs):
        calls.append(kwargs)
        if outcome[0] is not None:
            raise outcome[0]

    monkeypatch.setattr(distributed.jax.distributed, "initialize", initialize)
    monkeypatch.setattr(distributed.jax.distributed, "is_initialized", lambda: False)
    return calls, outcome


def test_plain_process_is_left_alone(fake_jax_distributed):
    calls, outcome = fake_jax_distributed
    # what jax.distributed.initialize() raises when it finds neither values nor a launcher
    outcome[0] = ValueError("coordinator_address should be defined.")
    before = jax.config.jax_cpu_collectives_implementation
    assert distributed.initialize() is False
    assert calls == [{"coordinator_address": None, "num_processes": None, "process_id": None}]
    assert jax.config.jax_cpu_collectives_implementation == before


def test_a_launcher_jax_detects_is_joined(fake_jax_distributed):
    calls, _ = fake_jax_distributed
    assert distributed.initialize() is True
    assert calls == [{"coordinator_address": None, "num_processes": None, "process_id": None}]


def test_other_initialization_errors_are_raised(fake_jax_distributed):
    calls, outcome = fake_jax_distributed
    outcome[0] = ValueError("Number of processes must be defined.")
    with pytest.raises(ValueError, match="Number of processes"):
        distributed.initialize()
    # with explicit values, even the no-launcher error is the user's to see
    outcome[0] = ValueError("coordinator_address should be defined.")
    with pytest.raises(ValueError, match="coordinator_address"):
        distributed.initialize(num_processes=2, process_id=0)


def test_explicit_values_and_environment(fake_jax_distributed, monkeypatch):
    calls, _ = fake_jax_distributed
    assert distributed.initialize("10.0.0.1:1234", 4, 2) is True
    assert calls[-1] == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2}
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "h:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert distributed.initialize() is True
    assert calls[-1] == {"coordinator_address": "h:1", "num_processes": 2, "process_id": 1}
    with pytest.raises(ValueError, match="process_id=3 is not in"):
        distributed.initialize("h:1", 2, 3)


@pytest.mark.parametrize("variable", ["SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"])
def test_a_one_task_launch_is_not_initialized(fake_jax_distributed, monkeypatch, variable):
    calls, _ = fake_jax_distributed
    monkeypatch.setenv(variable, "1")
    assert distributed.initialize() is False and calls == []
    monkeypatch.setenv(variable, "4")
    assert distributed.initialize() is True and len(calls) == 1


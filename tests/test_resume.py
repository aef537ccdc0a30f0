"""Preemption-safe, exact resume of train.py: SIGKILL, SIGTERM, NaN, corrupt checkpoints."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jirl.configs import dirl as dirl_config

from jirl.models import build_model, init_model_variables
from jirl.runtime import checkpoints as ckpt
from jirl.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
TINY = [
    "--config.model.stem_features=4", "--config.model.stage_features=(4,4,8,8,8)",
    "--config.model.stage_blocks=(1,1,1,1,1)", "--config.model.ggd_ch=4",
    "--config.data.image_size=40", "--config.data.crop_size=32",
    "--config.data.num_train=64", "--config.data.num_test=8", "--config.batch_size=4",
    "--config.eval.batch_size=4", "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=3", "--config.eval_every_steps=1000",
]


def _cmd(data_dir, workdir, steps=STEPS, *extra):
    return [sys.executable, "train.py", "--config", "configs/dirl.py:quick",
            "--workdir", str(workdir), f"--config.data.data_dir={data_dir}", *TINY,
            f"--config.num_train_steps={steps}", *extra]


_ENV: dict = {}


def _env():
    return dict(os.environ, **_ENV)


def _run(cmd):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=_env())


def _records(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = f.read().splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by SIGKILL
            pass
    return out


def _losses(workdir):
    """{step: loss} from the last record of each step (a killed run may log past its checkpoint)."""
    return {r["step"]: r["loss"] for r in _records(workdir) if "loss" in r}


def _start_and_wait(cmd, workdir, min_steps, timeout=300):
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env())
    deadline = time.monotonic() + timeout
    while len(_losses(workdir)) < min_steps:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("run did not reach the step in time")
        time.sleep(0.05)
    return proc


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    # every run compiles the same step: share XLA's persistent cache (a cached executable is the
    # same program, so it cannot change the numbers the bit-for-bit comparison checks)
    _ENV.update(JAX_COMPILATION_CACHE_DIR=str(root / "xla_cache"),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    yield root
    _ENV.clear()


@pytest.fixture(scope="module")
def reference(root):
    """An uninterrupted run of STEPS steps (also builds the shared synthetic data once)."""
    workdir = root / "reference"
    proc = _run(_cmd(root / "data", workdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = _losses(workdir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    return workdir, losses


def test_sigkill_and_restart_reproduce_the_loss_trajectory_bit_for_bit(root, reference):
    _, want = reference
    workdir = root / "killed"
    cmd = _cmd(root / "data", workdir)
    proc = _start_and_wait(cmd, workdir, min_steps=7)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    proc.stderr.close()
    killed_at = max(_losses(workdir))
    assert killed_at < STEPS, "the run finished before it was killed; kill earlier"
    proc = _run(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed_at = int(proc.stdout.split("resumed from ")[1].split(" at step ")[1].split()[0]) \
        if "resumed from" in proc.stdout else None
    assert resumed_at is not None and resumed_at % 3 == 0 and resumed_at <= killed_at, proc.stdout
    got = _losses(workdir)
    assert sorted(got) == list(range(1, STEPS + 1))
    diff = {s: (want[s], got[s]) for s in want if want[s] != got[s]}
    assert not diff, f"killed at {killed_at}, resumed at {resumed_at}: differing steps {diff}"
    # one record per logged step: the steps the killed run logged past its checkpoint are not
    # left beside the resumed run's records
    steps = [r["step"] for r in _records(workdir) if "loss" in r]
    assert steps == list(range(1, STEPS + 1)), (killed_at, resumed_at, steps)


def test_sigterm_saves_a_checkpoint_at_the_current_step_and_exits_cleanly(root, reference):
    _, want = reference
    workdir = root / "sigterm"
    cmd = _cmd(root / "data", workdir)
    proc = _start_and_wait(cmd, workdir, min_steps=4)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    stopped_at = max(_losses(workdir))
    assert f"SIGTERM: saved a checkpoint at step {stopped_at}" in out + err
    assert stopped_at < STEPS
    assert ckpt.Checkpointer(str(workdir)).latest_step() == stopped_at
    proc = _run(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"at step {stopped_at}" in proc.stdout
    got = _losses(workdir)
    assert got == want


def test_corrupt_newest_checkpoint_is_skipped_for_the_previous_good_one(root, reference, caplog):
    """A truncated newest step dir and a leftover Orbax tmp dir: resume from the older one."""
    ref_dir, want = reference
    workdir = root / "corrupt"
    os.makedirs(workdir)
    shutil.copytree(ref_dir / "checkpoints", workdir / "checkpoints")
    # keep steps 1..9 of the reference log, as a run that died after its step-9 checkpoint would
    with open(workdir / "metrics.jsonl", "w") as f:
        for r in _records(ref_dir):
            if r["step"] <= 9 and "loss" in r:
                f.write(json.dumps(r) + "\n")
    steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
    assert steps == [9, 12]
    shutil.rmtree(workdir / "checkpoints" / "12")
    shutil.copytree(workdir / "checkpoints" / "9", workdir / "checkpoints" / "12")
    # corrupt the newest one: truncate every data file of its `train` (optimizer state) item
    for path in glob.glob(str(workdir / "checkpoints" / "12" / "train" / "**" / "*"),
                          recursive=True):
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 3)
    # and an unfinished save of a later step, as SIGKILL during an async save leaves behind
    shutil.copytree(workdir / "checkpoints" / "9",
                    workdir / "checkpoints" / "15.orbax-checkpoint-tmp-1234567")
    # the killed run had validated at step 12 and saved best/12: the resumed run validates at
    # 12 again (every 3 steps) and must be able to save its best/12
    shutil.copytree(ref_dir / "best", workdir / "best")
    assert os.listdir(workdir / "best") == ["12"]
    proc = _run(_cmd(root / "data", workdir, 15, "--config.eval_every_steps=3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipping unreadable checkpoint checkpoints/12" in proc.stderr
    assert "at step 9" in proc.stdout
    # what lay beyond step 9 was set aside (not deleted), so steps 12 could be saved again
    assert _set_aside(workdir) == {"checkpoints": ["12"], "best": ["12"]}
    assert sorted(n for n in os.listdir(workdir / "checkpoints") if n.isdigit()) == ["12", "15"]
    assert os.listdir(workdir / "best") in (["12"], ["15"])
    got = _losses(workdir)
    assert sorted(got) == list(range(1, 16))
    assert {s: got[s] for s in range(1, 13)} == want  # steps 10..12 redone identically


def _set_aside(workdir):
    """{manager: [steps]} of <workdir>/set_aside (names are <manager>.<step>.<time>)."""
    found: dict = {}
    for name in os.listdir(workdir / ckpt.SET_ASIDE_DIR):
        if name != "README.txt":
            manager, step, _ = name.split(".")
            found.setdefault(manager, []).append(step)
    return {m: sorted(steps) for m, steps in found.items()}


def test_killed_between_the_best_and_the_latest_save_of_a_step_continues(root, reference):
    """Killed after best/12 was written and before checkpoints/12 was: the workdir holds
    checkpoints/9 and best/12. The resumed run restores 9, validates at 12 again and saves its
    own best/12 (Orbax refuses to save over an existing step: without reconciling, every resume
    died there), with the trajectory of the uninterrupted run."""
    ref_dir, want = reference
    workdir = root / "best_ahead"
    os.makedirs(workdir / "checkpoints")
    shutil.copytree(ref_dir / "checkpoints" / "9", workdir / "checkpoints" / "9")
    shutil.copytree(ref_dir / "best", workdir / "best")
    with open(workdir / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in _records(ref_dir) if r["step"] <= 12)
    proc = _run(_cmd(root / "data", workdir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at step 9" in proc.stdout
    assert "set aside best/12 (beyond step 9" in proc.stderr
    assert _set_aside(workdir) == {"best": ["12"]}
    assert os.listdir(workdir / "best") == ["12"]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["12", "9"]
    assert _losses(workdir) == want
    proc = _run(_cmd(root / "data", workdir, 15))  # and it goes on from there
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "at step 12" in proc.stdout


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(root, reference):
    """lr 1e-2 x 1e32 from epoch 1 on (MultiStepLR; batch 16 of the 58 training examples, 64
    minus 6 for validation = 3 steps per epoch).

    Steps 1..3 are checkpointed at step 3; step 4's update (lr 1e30) blows the params up to
    ~1e30, so a later step's loss or gradient is not finite. No test-only code path is needed.
    """
    workdir = root / "nan"
    proc = _run(_cmd(root / "data", workdir, 12, "--config.batch_size=16",
                     "--config.optimizer.learning_rate=1e-2",
                     "--config.optimizer.decay_epochs=(1,)",
                     "--config.optimizer.decay_factor=1e32"))
    assert proc.returncode != 0
    assert "NonFiniteLossError" in proc.stderr
    assert "non-finite loss or gradient at step" in proc.stderr
    bad_step = int(proc.stderr.split("non-finite loss or gradient at step ")[1].split()[0])
    assert bad_step > 4, proc.stderr[-2000:]
    assert "last good checkpoint" in proc.stderr
    checkpointer = ckpt.Checkpointer(str(workdir))
    try:
        last = checkpointer.latest_step()
        assert last is not None and last < bad_step
        config = dirl_config.get_config("quick")
        config.model.stem_features, config.model.ggd_ch = 4, 4
        config.model.stage_features = (4, 4, 8, 8, 8)
        config.data.crop_size = 32
        spec, model = build_model(config)
        target = init_model_variables(config, model)
        state = loop.create_train_state(model, loop.make_optimizer(config.optimizer, 4), target)
        model_items, train_items, meta = checkpointer.restore_latest(
            loop._model_items(state), loop._train_items(state))
    finally:
        checkpointer.close()
    assert int(train_items["step"]) == last == meta["step"]
    for leaf in jax.tree.leaves((model_items, train_items)):
        assert np.all(np.isfinite(np.asarray(leaf))), "a non-finite value reached a checkpoint"
    assert all(np.abs(np.asarray(p)).max() < 1e6 for p in jax.tree.leaves(model_items["params"]))
    assert jnp.float32 == jax.tree.leaves(model_items["params"])[0].dtype


def test_no_readable_checkpoint_is_an_error_not_a_silent_restart(root, reference, tmp_path):
    """Checkpoints that all fail to restore (e.g. a changed model config) must not be replaced
    by a run started over from step 0."""
    ref_dir, _ = reference
    shutil.copytree(ref_dir / "checkpoints", tmp_path / "checkpoints")
    checkpointer = ckpt.Checkpointer(str(tmp_path))
    try:
        with pytest.raises(ckpt.CheckpointError, match="no readable checkpoint"):
            checkpointer.restore_latest({"params": {"w": jnp.zeros(3)}, "batch_stats": {}},
                                        {"step": 0, "opt_state": ()})
    finally:
        checkpointer.close()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["12", "9"]

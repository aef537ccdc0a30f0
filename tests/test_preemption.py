"""Preemption of a multi-host run: a SIGTERM that reaches one host of two (JAX's preemption sync).

Each run is a subprocess pair on loopback: `jax.distributed.initialize` only takes effect before
JAX creates its backends.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from jirl_testing import ROOT, free_port, run, run_processes, subprocess_env

from jirl.runtime import checkpoints as ckpt

STEPS = 8
TINY = [
    "--config.model.stem_features=4", "--config.model.stage_features=(4,4,8,8,8)",
    "--config.model.stage_blocks=(1,1,1,1,1)", "--config.model.ggd_ch=4",
    "--config.data.image_size=40", "--config.data.crop_size=32", "--config.data.num_train=32",
    "--config.data.num_test=8", "--config.batch_size=4", "--config.eval.batch_size=4",
    "--config.log_every_steps=1", "--config.checkpoint_every_steps=100",
    "--config.eval_every_steps=1000", f"--config.num_train_steps={STEPS}",
]


def _train(workdir, data_dir) -> list[str]:
    return ["train.py", "--config", "configs/dirl.py:quick", "--workdir", str(workdir),
            f"--config.data.data_dir={data_dir}", *TINY]


def _two_processes(workdir, data_dir) -> list[list[str]]:
    address = f"127.0.0.1:{free_port()}"
    return [[*_train(workdir, data_dir), "--coordinator_address", address, "--num_processes", "2",
             "--process_id", str(i)] for i in range(2)]


def _logged_losses(workdir) -> dict:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        records = [json.loads(line) for line in f if line.endswith("\n")]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_sigterm_to_one_host_stops_both_at_the_same_saved_step(tmp_path):
    """A preemption notice reaches one host only: both processes agree on the step, save it
    collectively and exit 0; the resumed 2-process run then follows the uninterrupted run's
    loss trajectory (a one-process run of the same global batches: tests/test_distributed.py
    shows the two agree to float noise, which rtol 1e-4 allows; a wrong resume step or data
    position changes the loss by far more)."""
    data_dir = tmp_path / "data"
    # the runs compile the same programs: share XLA's persistent cache
    env = subprocess_env(cache_dir=str(tmp_path / "xla_cache"))
    run(_train(tmp_path / "reference", data_dir), env, timeout=600)  # also prepares the data
    want = _logged_losses(tmp_path / "reference")
    assert sorted(want) == list(range(1, STEPS + 1))

    workdir = tmp_path / "preempted"
    procs = [subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for args in _two_processes(workdir, data_dir)]
    try:
        deadline = time.monotonic() + 300
        while len(_logged_losses(workdir)) < 2:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "the run did not reach step 2"
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
    checkpointer = ckpt.Checkpointer(str(workdir))
    assert checkpointer.latest_step() == stopped[0]
    checkpointer.close()

    for rc, out, err in run_processes(_two_processes(workdir, data_dir), env):
        assert rc == 0 and f"at step {stopped[0]}" in out, out[-2000:] + err[-4000:]
    got = _logged_losses(workdir)
    assert sorted(got) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                               rtol=1e-4)

"""jirl's storage clients against a loopback GCS emulator (tests/gcs_emulator.py): a gs:// workdir.

Orbax checkpoints (tensorstore for arrays, etils.epath for directories and metadata), plain files
through etils.epath (gcsfs), tensorboardX event files, in this process and in a subprocess.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from gcs_emulator import gcs_bucket  # noqa: F401  (the fixture)
from jirl_testing import ROOT, subprocess_env

from jirl.runtime import checkpoints


def _tree():
    model = {"params": {"conv": {"kernel": jnp.arange(24.0).reshape(2, 3, 4), "bias": jnp.ones(4)}},
             "batch_stats": {"bn": {"mean": jnp.full((4,), 0.5)}}}
    train = {"step": jnp.asarray(7, jnp.int32), "opt_state": {"mu": jnp.zeros((2, 3, 4))}}
    return model, train


def _manager(directory: str, max_to_keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
    # a plain manager, which can be read-only (jirl's managers always write)
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                           read_only=read_only)
    return ocp.CheckpointManager(directory, options=options, item_names=("model", "train", "meta"))


def _assert_tree_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_orbax_checkpoints_on_gcs(gcs_bucket, monkeypatch):  # noqa: F811
    directory = f"{gcs_bucket}/run/checkpoints"
    # on gs:// orbax commits by writing commit_success.txt into the final directory, not by
    # renaming a temporary one (a copy + delete of every object on GCS): no rename may happen
    assert ocp.path.atomicity_defaults.get_default_temporary_path_class(
        epath.Path(directory)) is ocp.path.atomicity.CommitFileTemporaryPath

    def no_rename(*args, **kwargs):
        raise AssertionError(f"orbax renamed {args} on gs://")

    from etils.epath import backend

    monkeypatch.setattr(backend.fsspec_backend, "rename", no_rename)
    monkeypatch.setattr(backend.fsspec_backend, "replace", no_rename)
    model, train = _tree()
    manager = _manager(directory)
    for step in (1, 2, 3):  # max_to_keep=2: step 1 is deleted (orbax's gcs_utils.rmtree)
        checkpoints.save(manager, step, model, train, {"step": step, "model": "dirl"})
        manager.wait_until_finished()
    manager.close()
    monkeypatch.undo()

    root = epath.Path(directory)
    assert sorted(p.name for p in root.iterdir()) == ["2", "3"]  # no leftover temporary directory
    step_dir = root / "3"
    assert sorted(p.name for p in step_dir.iterdir()) == [
        "_CHECKPOINT_METADATA", "commit_success.txt", "meta", "model", "train"]
    assert ocp.step.is_path_finalized(step_dir)
    for item in ("meta", "model", "train"):
        assert (step_dir / item / "commit_success.txt").exists()
    assert any(p.name.startswith("ocdbt.process_") for p in (step_dir / "model").iterdir())

    manager = _manager(directory, read_only=True)
    assert manager.all_steps() == [2, 3] and manager.latest_step() == 3
    args = ocp.args.Composite(
        model=ocp.args.StandardRestore(checkpoints.replicated_target(model)),
        train=ocp.args.StandardRestore(checkpoints.replicated_target(train)),
        meta=ocp.args.JsonRestore())
    restored = manager.restore(3, args=args)
    manager.close()
    _assert_tree_equal(restored["model"], model)
    _assert_tree_equal(restored["train"], train)
    assert {k: restored["meta"][k] for k in ("step", "model")} == {"step": 3, "model": "dirl"}


def test_epath_files_on_gcs(gcs_bucket):  # noqa: F811
    run = epath.Path(f"{gcs_bucket}/run/files")
    run.mkdir(parents=True, exist_ok=True)
    f = run / "notes.txt"
    f.write_text("hello gcs\n")
    assert f.exists() and f.is_file() and f.read_text() == "hello gcs\n"
    assert f.stat().length == len("hello gcs\n")
    (run / "sub").mkdir(exist_ok=True)
    (run / "sub" / "a.json").write_text("{}")
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt", "sub"]
    assert [p.name for p in run.glob("*.txt")] == ["notes.txt"]

    renamed = f.rename(run / "renamed.txt")  # gcsfs: the moveTo API (patched into the emulator)
    assert not f.exists() and renamed.read_text() == "hello gcs\n"
    # a directory (what Checkpointer._set_aside does to an unreadable step): copy + delete
    (run / "sub").rename(run / "moved")
    assert not (run / "sub").exists() and (run / "moved" / "a.json").read_text() == "{}"
    renamed.unlink()
    run.rmtree()
    assert not run.exists()


def test_tensorstore_generations_on_emulator(gcs_bucket):  # noqa: F811
    """The emulator patches orbax's OCDBT relies on: generations on reads, preconditions on writes."""
    import tensorstore as ts

    kv = ts.KvStore.open(f"{gcs_bucket}/run/kvstore/").result()
    first = kv.write("k", b"1").result().generation
    read = kv.read("k").result()  # media download: x-goog-generation header
    assert read.value == b"1" and read.stamp.generation == first
    second = kv.write("k", b"2", if_equal=first).result().generation
    assert second and second != first
    assert not kv.write("k", b"3", if_equal=first).result().generation  # stale: 412, not written
    assert kv.read("k").result().value == b"2"
    assert kv.read("k", if_not_equal=second).result().state == "unspecified"  # 304
    assert kv.read("k", if_not_equal=first).result().value == b"2"


def _events(data: bytes) -> list[tuple[int, str, float]]:
    """(step, tag, value) of the scalar summaries in a TFRecord event file."""
    from tensorboardX.proto import event_pb2

    out, i = [], 0
    while i < len(data):
        (n,) = struct.unpack("Q", data[i:i + 8])
        event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
        out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
        i += 12 + n + 4
    return out


def test_tensorboardx_on_gcs(gcs_bucket):  # noqa: F811
    from tensorboardX import SummaryWriter

    logdir = f"{gcs_bucket}/run/tensorboard"
    writer = SummaryWriter(logdir, purge_step=1)  # as jirl.training.writers.MetricWriter does
    for step in (1, 2, 3):
        writer.add_scalar("loss", 1.0 / step, step)
    writer.flush()
    writer.add_scalar("loss", 0.25, 4)  # a second upload of the object (if_generation_match)
    writer.close()
    (events,) = epath.Path(logdir).iterdir()
    assert events.name.startswith("events.out.tfevents.")
    scalars = _events(events.read_bytes())
    assert [(step, tag) for step, tag, _ in scalars] == [(1, "loss"), (2, "loss"), (3, "loss"), (4, "loss")]
    assert [v for _, _, v in scalars] == pytest.approx([1.0, 0.5, 1 / 3, 0.25])


_CHILD = textwrap.dedent("""
    import sys
    import jax.numpy as jnp
    import orbax.checkpoint as ocp
    from etils import epath
    from tensorboardX import SummaryWriter
    from jirl.runtime import checkpoints

    run = sys.argv[1]
    manager = ocp.CheckpointManager(f"{run}/checkpoints", item_names=("model", "train", "meta"),
                                    options=ocp.CheckpointManagerOptions(max_to_keep=1))
    checkpoints.save(manager, 5, {"params": {"w": jnp.arange(6.0)}}, None, {"step": 5})
    manager.wait_until_finished()
    manager.close()
    (epath.Path(run) / "child.txt").write_text("from the child")
    with SummaryWriter(f"{run}/tensorboard") as writer:
        writer.add_scalar("child", 2.0, 5)
    print("child done")
""")


def test_subprocess_inherits_emulator(gcs_bucket):  # noqa: F811
    run = f"{gcs_bucket}/child-run"
    env = subprocess_env()  # jirl_testing's: a copy of os.environ, where the fixture set its vars
    assert all(env[k] == v for k, v in gcs_bucket.env.items())
    proc = subprocess.run([sys.executable, "-c", _CHILD, run], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "child done" in proc.stdout, proc.stderr[-5000:]

    assert (epath.Path(run) / "child.txt").read_text() == "from the child"
    manager = ocp.CheckpointManager(f"{run}/checkpoints", item_names=("model", "train", "meta"),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    target = checkpoints.replicated_target({"params": {"w": jnp.zeros(6)}})
    restored = manager.restore(5, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    manager.close()
    np.testing.assert_array_equal(restored["model"]["params"]["w"], np.arange(6.0))
    assert restored["meta"]["step"] == 5
    (events,) = epath.Path(f"{run}/tensorboard").iterdir()
    assert _events(events.read_bytes()) == [(5, "child", 2.0)]


# --- jirl itself on a gs:// workdir ----------------------------------------------------------------

TINY = ["--config.model.stem_features=4", "--config.model.stage_features=(4,4,8,8,8)",
        "--config.model.stage_blocks=(1,1,1,1,1)", "--config.model.ggd_ch=4",
        "--config.data.image_size=40", "--config.data.crop_size=32", "--config.data.num_train=16",
        "--config.data.num_test=4", "--config.batch_size=4", "--config.eval.batch_size=4",
        "--config.log_every_steps=1", "--config.checkpoint_every_steps=2",
        "--config.eval_every_steps=1000"]


def _jsonl(path: epath.Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_resume_and_eval_with_a_gs_workdir(gcs_bucket, tmp_path):  # noqa: F811
    """train.py writes its checkpoints, best checkpoint, metrics, config and TensorBoard events
    into gs://, resumes from there, and eval.py scores the checkpoint and writes eval.json there
    (before: the workdir became a local folder named 'gs:')."""
    run = f"{gcs_bucket}/train-run"
    env = subprocess_env(cache_dir=str(tmp_path / "xla_cache"))

    def train(steps: int) -> str:
        proc = subprocess.run(
            [sys.executable, "train.py", "--config", "configs/dirl.py:quick", "--workdir", run,
             f"--config.data.data_dir={tmp_path / 'data'}", *TINY,
             f"--config.num_train_steps={steps}"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-5000:]
        return proc.stdout

    # run from a folder of its own: nothing may land in a local 'gs:' folder
    (tmp_path / "train.py").symlink_to(f"{ROOT}/train.py")
    (tmp_path / "eval.py").symlink_to(f"{ROOT}/eval.py")
    (tmp_path / "configs").symlink_to(f"{ROOT}/configs")
    train(4)
    root = epath.Path(run)
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["2", "4"]
    assert [p.name for p in (root / "best").iterdir()] == ["4"]
    assert [r["step"] for r in _jsonl(root / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]
    assert (root / "config.json").exists() and list((root / "tensorboard").iterdir())
    assert "resumed from" in (out := train(6)) and f"{run} at step 4" in out
    assert [r["step"] for r in _jsonl(root / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4, 5, 6]
    proc = subprocess.run([sys.executable, "eval.py", "--checkpoint", run, "--batch_size", "4"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert f"results: {run}/eval.json" in proc.stdout
    import json

    payload = json.loads((root / "eval.json").read_text())
    best = [p.name for p in (root / "best").iterdir()]
    assert payload["checkpoint"] == f"{run}/best/{best[0]}" and payload["results"]
    assert not (tmp_path / "gs:").exists()


def test_a_resume_sets_aside_what_lies_beyond_on_gcs(gcs_bucket):  # noqa: F811
    """Checkpointer.reconcile moves best/6 aside on gs:// (a folder there exists only once an
    object is in it)."""
    run = f"{gcs_bucket}/reconcile-run"
    model, train = _tree()
    c = checkpoints.Checkpointer(run)
    c.save_latest(3, model, train, {"step": 3})
    c.save_best(6, model, {"step": 6})
    c.wait()
    assert c.reconcile(3) == ["best/6"]
    assert c.best.all_steps() == [] and c.latest.all_steps() == [3]
    c.save_best(6, model, {"step": 6})  # the resumed run can save its own step 6
    c.close()
    aside = sorted(p.name for p in (epath.Path(run) / checkpoints.SET_ASIDE_DIR).iterdir())
    assert aside[0] == "README.txt" and aside[1].startswith("best.6.")
    restored, step_dir = checkpoints.restore(run, jax.tree.map(np.zeros_like, model))
    assert step_dir == f"{run}/best/6"
    _assert_tree_equal(restored, model)

"""Checkpoints are verified, not trusted: a checksum of the model arrays recorded at save and
checked at restore, non-finite arrays refused, and an unreadable best checkpoint giving way to
the intact latest one with one warning line."""

import glob
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jirl_testing import ROOT, subprocess_env, tiny_checkpoint, tiny_dirl_config
from PIL import Image

from jirl.runtime import checkpoints as ckpt


def _variables(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"params": {"conv": {"kernel": rng.normal(size=(256, 256)).astype(np.float32),
                                "bias": rng.normal(size=(256,)).astype(np.float32)}},
            "batch_stats": {"bn": {"mean": rng.normal(size=(16,)).astype(np.float32)}}}


def _target(variables: dict) -> dict:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)


def _largest_array_file(step_dir: str) -> str:
    paths = [p for p in glob.glob(os.path.join(step_dir, "model", "**", "*"), recursive=True)
             if os.path.isfile(p)]
    return max(paths, key=os.path.getsize)


def _flip_bytes(path: str, count: int = 42, xor: int = 0xFF) -> None:
    """XORs `count` bytes in the middle of `path` with `xor` (the file keeps its size)."""
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        middle = len(data) // 2
        for i in range(middle, middle + count):
            data[i] ^= xor
        f.seek(0)
        f.write(data)


def _truncate_arrays(step_dir: str) -> None:
    for path in glob.glob(os.path.join(step_dir, "model", "**", "*"), recursive=True):
        if os.path.isfile(path) and os.path.getsize(path) > 1000:
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 3)


def test_the_meta_records_a_checksum_of_the_model_arrays(tmp_path):
    variables = _variables()
    step_dir = ckpt.write_model_checkpoint(str(tmp_path / "ck"), variables, {"model": "x"})
    recorded = ckpt.read_meta(step_dir)[ckpt.CHECKSUM_KEY]
    assert recorded == ckpt.model_checksum(variables)
    assert len(recorded) == 64 and int(recorded, 16) >= 0  # a SHA-256 in hex
    changed = jax.tree.map(np.copy, variables)
    changed["params"]["conv"]["bias"][3] += 1e-6
    assert ckpt.model_checksum(changed) != recorded
    np.testing.assert_array_equal(ckpt.restore_model(step_dir, _target(variables))["params"]
                                  ["conv"]["kernel"], variables["params"]["conv"]["kernel"])


def test_flipped_bytes_in_an_array_file_are_refused(tmp_path):
    """42 bytes flipped inside the array data loaded silently (an empty mask, NaN in the JSON).
    The data are compressed: what flipped bytes decode to varies, so either check may catch it."""
    variables = _variables()
    step_dir = ckpt.write_model_checkpoint(str(tmp_path / "ck"), variables, {"model": "x"})
    _flip_bytes(_largest_array_file(step_dir))
    with pytest.raises(ckpt.CheckpointError,
                       match="no readable checkpoint.*\n.*(non-finite values|do not match the checksum)"):
        ckpt.restore_model(step_dir, _target(variables))


def test_finite_arrays_altered_after_the_save_are_refused(tmp_path):
    """Arrays replaced by other finite values of the same shapes (what a flipped low bit of a
    value does): only the checksum tells them from the saved ones."""
    import orbax.checkpoint as ocp

    variables = _variables()
    step_dir = ckpt.write_model_checkpoint(str(tmp_path / "ck"), variables, {"model": "x"})
    altered = jax.tree.map(np.copy, variables)
    altered["params"]["conv"]["kernel"][5, 7] = np.nextafter(np.float32(
        altered["params"]["conv"]["kernel"][5, 7]), np.float32(np.inf))
    shutil.rmtree(os.path.join(step_dir, "model"))
    with ocp.StandardCheckpointer() as writer:
        writer.save(os.path.join(step_dir, "model"), altered)
    with pytest.raises(ckpt.CheckpointError, match="no readable checkpoint.*\n.*do not match the "
                       "checksum recorded when it was saved"):
        ckpt.restore_model(step_dir, _target(variables))


def test_a_checksum_that_does_not_match_is_an_error_naming_the_checkpoint(tmp_path):
    variables = _variables()
    step_dir = ckpt.write_model_checkpoint(str(tmp_path / "ck"), variables, {"model": "x"})
    meta_file = os.path.join(step_dir, "meta", "metadata")
    meta = json.load(open(meta_file))
    meta[ckpt.CHECKSUM_KEY] = "0" * 64
    json.dump(meta, open(meta_file, "w"))
    with pytest.raises(ckpt.CheckpointError,
                       match=f"{step_dir}: CheckpointError: checkpoint {step_dir}: the model "
                             "arrays do not match the checksum recorded"):
        ckpt.restore_model(step_dir, _target(variables))


def test_non_finite_arrays_are_refused_at_write_and_at_restore(tmp_path):
    variables = _variables()
    variables["params"]["conv"]["bias"][7] = np.nan
    variables["batch_stats"]["bn"]["mean"][0] = np.inf
    with pytest.raises(ckpt.CheckpointError, match=r"non-finite values \(NaN or inf\) in 2 array"
                       r"\(s\): \['batch_stats'\]\['bn'\]\['mean'\], \['params'\]\['conv'\]\['bias'\]"):
        ckpt.write_model_checkpoint(str(tmp_path / "refused"), variables, {})
    assert not os.path.exists(tmp_path / "refused" / "0")
    # one written by other means (an older jirl, another tool) is refused at restore
    manager = ckpt._manager(ckpt.files.path(tmp_path / "ck"), 1)
    ckpt.save(manager, 0, variables, None, {})
    manager.wait_until_finished()
    manager.close()
    with pytest.raises(ckpt.CheckpointError, match=r"non-finite .*\['params'\]\['conv'\]\['bias'\]"):
        ckpt.restore_model(str(tmp_path / "ck"), _target(variables))


def test_an_unreadable_best_checkpoint_gives_way_to_the_latest_with_one_warning(tmp_path, caplog):
    workdir = tmp_path / "run"
    best = ckpt.write_model_checkpoint(str(workdir / "best"), _variables(1), {}, step=6)
    latest = ckpt.write_model_checkpoint(str(workdir / "checkpoints"), _variables(2), {}, step=6)
    _truncate_arrays(best)
    with caplog.at_level(logging.WARNING):
        variables, step_dir = ckpt.restore(str(workdir), _target(_variables()))
    assert step_dir == latest
    np.testing.assert_array_equal(variables["params"]["conv"]["kernel"],
                                  _variables(2)["params"]["conv"]["kernel"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and "unreadable checkpoint" in r.getMessage()]
    assert len(warnings) == 1 and f"; using {latest}" in warnings[0], warnings
    assert "\n" not in warnings[0] and len(warnings[0]) < 600, warnings[0]
    # named directly, the unreadable step is an error of two short lines, not a traceback of
    # TensorStore specs
    with pytest.raises(ckpt.CheckpointError) as e:
        ckpt.restore(best, _target(_variables()))
    lines = str(e.value).splitlines()
    assert len(lines) == 2 and lines[1].startswith(f"  {best}: ") and len(lines[1]) < 600, lines


def test_predict_on_a_workdir_whose_best_checkpoint_is_truncated(tmp_path):
    """The CLI: the intact latest checkpoint predicts, with one warning line on stderr."""
    config = tiny_dirl_config()
    best, _, _ = tiny_checkpoint(tmp_path / "run" / "best", config, seed=1)
    latest, _, _ = tiny_checkpoint(tmp_path / "run" / "checkpoints", config, seed=2)
    _truncate_arrays(best)
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "photo.png")
    proc = subprocess.run(
        [sys.executable, "predict.py", "--checkpoint", str(tmp_path / "run"),
         "--input", str(tmp_path / "photo.png"), "--output", str(tmp_path / "out")],
        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("W")]
    assert len(warnings) == 1, proc.stderr[-3000:]
    assert "unreadable checkpoint" in warnings[0] and warnings[0].endswith(f"using {latest}")
    assert "tensorstore" not in proc.stderr.lower(), proc.stderr
    record = json.loads(open(tmp_path / "out" / "predictions.jsonl").readline())
    assert record["checkpoint"] == latest


def test_replicated_arrays_checksum_as_their_host_copy():
    variables = _variables()
    on_device = jax.tree.map(jnp.asarray, variables)
    assert ckpt.model_checksum(on_device) == ckpt.model_checksum(variables)

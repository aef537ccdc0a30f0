"""Every command line on 2 and 8 (simulated) devices and over 2 processes: eval.py (with
--save_outputs), train.py with --config.init_from and resume, python -m jirl.convert; and the errors
for a checkpoint of another model or shape.

Each case runs in a subprocess (the device count is fixed when JAX starts). One tiny DIRL is
trained once on one device; every other run restores it onto its own device mesh.
"""

import json
import os

import jax
import numpy as np
import pytest
from jirl_testing import free_port, run, run_processes, stored_variables, subprocess_env

TINY = [
    "--config.model.stem_features=4", "--config.model.stage_features=(4,4,8,8,8)",
    "--config.model.stage_blocks=(1,1,1,1,1)", "--config.model.ggd_ch=4",
    "--config.data.image_size=40", "--config.data.crop_size=32",
    "--config.data.num_train=40", "--config.data.num_test=8", "--config.batch_size=8",
    "--config.eval.batch_size=8", "--config.log_every_steps=1",
]
DEVICE_COUNTS = [2, 8]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(root, common flags, env factory, the 1-device eval of the checkpoint) after 2 steps."""
    root = tmp_path_factory.mktemp("entry_points")
    cache = root / "xla_cache"
    common = ["--config", "configs/dirl.py:quick", f"--config.data.data_dir={root / 'data'}", *TINY]

    def env(devices):
        return subprocess_env(devices, cache_dir=cache)

    run(["train.py", *common, "--workdir", str(root / "run"), "--config.num_train_steps=2",
         "--config.eval_every_steps=2", "--config.checkpoint_every_steps=2"], env(1))
    run(_eval(common, root / "eval1", _checkpoint(root)), env(1))
    with open(root / "eval1" / "eval.json") as f:
        reference = json.load(f)["results"]["mask"]["all"]
    return root, common, env, reference


def _checkpoint(root):
    return root / "run" / "checkpoints" / "2"


def _eval(common, workdir, checkpoint, *extra) -> list[str]:
    return ["eval.py", *common, "--workdir", str(workdir), "--checkpoint", str(checkpoint), *extra]


def _assert_same_scores(workdir, reference):
    with open(workdir / "eval.json") as f:
        result = json.load(f)["results"]["mask"]["all"]
    assert result["count"] == reference["count"] == 8
    for k in ("ap", "f1", "iou"):
        assert abs(result[k] - reference[k]) < 1e-6, (k, result, reference)


@pytest.mark.parametrize("devices", DEVICE_COUNTS)
def test_eval_with_masks_on_several_devices(trained, devices, tmp_path):
    root, common, env, reference = trained
    proc = run(_eval(common, tmp_path, _checkpoint(root), "--save_outputs"), env(devices))
    assert "AP" in proc.stdout
    _assert_same_scores(tmp_path, reference)
    assert len(os.listdir(tmp_path / "masks" / "mask")) == 8


@pytest.mark.parametrize("devices", DEVICE_COUNTS[-1:])  # two train.py runs: the largest mesh only
def test_train_init_from_then_resume_on_several_devices(trained, devices, tmp_path):
    root, common, env, _ = trained
    args = ["train.py", *common, "--workdir", str(tmp_path), f"--config.init_from={_checkpoint(root)}",
            "--config.eval_every_steps=100", "--config.checkpoint_every_steps=1"]
    first = run([*args, "--config.num_train_steps=1"], env(devices))
    assert "initialized params and BN statistics from" in first.stderr + first.stdout
    second = run([*args, "--config.num_train_steps=2"], env(devices))
    assert "resumed from" in second.stderr + second.stdout
    with open(tmp_path / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f if '"loss"' in line]
    assert steps == [1, 2]


def test_eval_over_two_processes_writes_every_mask(trained, tmp_path):
    root, common, env, reference = trained
    address = f"127.0.0.1:{free_port()}"
    outputs = run_processes(
        [_eval(common, tmp_path, _checkpoint(root), "--save_outputs", "--coordinator_address", address,
               "--num_processes", "2", "--process_id", str(i)) for i in range(2)], env(1))
    for i, (rc, out, err) in enumerate(outputs):
        assert rc == 0, f"process {i}:\n{out[-3000:]}\n{err[-6000:]}"
    _assert_same_scores(tmp_path, reference)
    # each process wrote the masks of the examples it read: every example once
    assert len(os.listdir(tmp_path / "masks" / "mask")) == 8


@pytest.fixture(scope="module")
def official_files(trained, tmp_path_factory):
    """The trained checkpoint written back as official DIRL encoder / decoder .pth files."""
    pytest.importorskip("torch", reason="the optional extra jirl[torch] is not installed")
    from test_convert import official_dirl_files

    root, *_ = trained
    variables = stored_variables(_checkpoint(root))
    out = tmp_path_factory.mktemp("official")
    official_dirl_files(variables, out)
    return out, variables


@pytest.mark.parametrize("devices", DEVICE_COUNTS)
def test_convert_on_several_devices(trained, official_files, devices, tmp_path):
    root, common, env, reference = trained
    files, variables = official_files
    out = tmp_path / "converted"
    proc = run(["-m", "jirl.convert", "dirl", "--encoder", str(files / "enc.pth"), "--decoder",
                str(files / "dec.pth"), "--out", str(out), "--config", "configs/dirl.py",
                *[f for f in TINY if f.startswith("--config.model.")]], env(devices))
    assert "wrote" in proc.stdout
    # --out, the old name of --output, still works for a release and says so
    assert "--out is deprecated and goes in the next release; use --output=..." in proc.stderr
    from jirl.runtime import checkpoints as ckpt

    step_dir = ckpt.resolve_checkpoint(str(out))
    assert ckpt.read_meta(step_dir)["config"]["model"]["ggd_ch"] == 4
    jax.tree.map(np.testing.assert_array_equal, stored_variables(step_dir), variables)
    # ... and eval.py on that many devices scores it as the original checkpoint
    run(_eval(common, tmp_path, out), env(devices))
    _assert_same_scores(tmp_path, reference)


def _unet_checkpoint(directory):
    """An (untrained) UNet checkpoint of the tiny widths, as train.py would write it."""
    from jirl.configs import unet as unet_config

    from jirl.models import build_model, init_model_variables
    from jirl.runtime import checkpoints as ckpt

    config = unet_config.get_config("quick")
    config.model.stem_features, config.model.stage_features = 4, (4, 4, 8, 8, 8)
    config.data.crop_size = 32
    _, model = build_model(config)
    variables = jax.device_get(init_model_variables(config, model))
    return ckpt.write_model_checkpoint(str(directory), variables, {
        "model": "unet", "config": json.loads(config.to_json_best_effort())})


def test_init_from_and_eval_of_another_models_checkpoint_name_it(trained, tmp_path):
    root, common, env, _ = trained
    unet_dir = _unet_checkpoint(tmp_path / "unet")
    message = "is a unet checkpoint; the config builds dirl"
    proc = run(["train.py", *common, "--workdir", str(tmp_path / "run"),
                f"--config.init_from={unet_dir}", "--config.num_train_steps=1"], env(2), check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    proc = run(_eval(common, tmp_path / "eval", unet_dir), env(2), check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-3000:]


def test_init_from_a_checkpoint_of_other_widths_lists_the_differences(trained, tmp_path):
    root, common, env, _ = trained
    proc = run(["train.py", *common, "--config.model.ggd_ch=8", "--workdir", str(tmp_path),
                f"--config.init_from={_checkpoint(root)}", "--config.num_train_steps=1"], env(2),
               check=False)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "does not fit the configured model" in proc.stderr
    assert "shape mismatch" in proc.stderr
    assert "config.model.ggd_ch: checkpoint 4 vs config 8" in proc.stderr

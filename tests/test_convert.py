"""PyTorch checkpoint import: key mapping, error reports, safe loading, the CLI, ImageNet init.

Tests marked `torch` need the optional extra (`pip install 'jirl[torch]'`); the mapping and
error-report tests use numpy arrays in PyTorch layout and run everywhere.
"""

import builtins
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jirl.convert import ConversionError, load_state_dict
from jirl.convert import dirl as convert
from jirl.models import dirl
from jirl.models.resnet import TORCHVISION_RESNET34
from jirl.runtime.mapping import assign
from jirl.runtime.pretrained import assign_pretrained, load_pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(stem_features=8, stage_features=(8, 8, 16, 16, 16), stage_blocks=(1, 2, 1, 1, 1),
            ggd_ch=4)


def _variables(model, size=32):
    return jax.device_get(jax.jit(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)), False))())


def to_torch_layout(variables, rules_inverse):
    """A state_dict in PyTorch layout made from jirl variables (the inverse of the import)."""
    out = {}
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    for path, value in flat:
        keys = [p.key for p in path]
        module, leaf = "/".join(keys[1:-1]), keys[-1]
        torch_module = rules_inverse(module)
        value = np.asarray(value)
        if leaf == "kernel":
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.reshape(1, 1, -1)
            name = "weight"
        else:
            name = {"scale": "weight", "bias": "bias", "mean": "running_mean",
                    "var": "running_var"}[leaf]
        out[f"{torch_module}.{name}"] = value
        if leaf == "mean":
            out[f"{torch_module}.num_batches_tracked"] = np.array(7)
    return out


def official_module_name(path: str) -> str:
    """jirl module path -> official DIRL module path (written independently of the importer)."""
    p = path.split("/")
    if p[0] == "encoder":
        if p[1] in ("inconv", "inbn"):
            return p[1]
        stage, block, name = p[1], p[2][len("block"):], p[3]
        name = {"downsample_conv": "downsample.0" if stage != "encoder5" else "downsample",
                "downsample_bn": "downsample.1"}.get(name, name)
        return f"{stage}.{block}.{name}"
    if p[1] == "trans":
        return f"trans.{p[2]}.{p[3]}.{'norm' if p[4] == 'bn' else 'conv'}"
    if p[1].startswith("mda_"):
        if p[2] == "channel_gate":
            return f"attention_layers.{p[1]}.ChannelGate.conv"
        return f"attention_layers.{p[1]}.SpatialGate.spatial.{p[3][-1]}.{p[4]}"
    if p[1] == "ggd":
        if p[3] == "conv5":
            return f"decoder_layers.deconv.decoder.{p[2]}.conv5"
        return f"decoder_layers.deconv.decoder.{p[2]}.{p[3]}.{'norm' if p[4] == 'bn' else 'conv'}"
    raise AssertionError(path)


def official_dirl_files(variables, directory):
    """jirl DIRL variables written as the official encoder / decoder .pth files: (enc, dec)."""
    import torch

    sd = to_torch_layout(variables, official_module_name)
    enc = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()
           if k.startswith(("inconv", "inbn", "encoder"))}
    dec = {k: torch.from_numpy(np.array(v)) for k, v in sd.items() if k not in enc}
    torch.save(enc, os.path.join(directory, "enc.pth"))
    torch.save(dec, os.path.join(directory, "dec.pth"))
    return os.path.join(directory, "enc.pth"), os.path.join(directory, "dec.pth")


def test_official_layout_round_trips_through_the_importer():
    model = dirl.DIRL(**TINY)
    variables = _variables(model)
    sd = to_torch_layout(variables, official_module_name)
    enc = {k: v for k, v in sd.items() if k.startswith(("inconv", "inbn", "encoder"))}
    dec = {k: v for k, v in sd.items() if k not in enc}
    zeros = jax.tree.map(np.zeros_like, variables)
    restored = convert.dirl_variables(enc, dec, zeros)
    jax.tree.map(np.testing.assert_array_equal, restored, variables)


def test_every_problem_is_listed_in_one_error():
    model = dirl.DIRL(**TINY)
    variables = _variables(model)
    sd = to_torch_layout(variables, official_module_name)
    del sd["trans.im0.top_down.conv.bias"]
    sd["trans.im0.extra.conv.weight"] = np.zeros((1, 1, 1, 1))
    sd["decoder_layers.deconv.decoder.d0.conv5.weight"] = np.zeros((1, 4, 3, 3))
    sd["unknown_module.weight"] = np.zeros(3)
    with pytest.raises(ConversionError) as e:
        convert.dirl_variables({}, sd, variables)
    msg = str(e.value)
    assert "missing (no source key): params/decoder/trans/im0/top_down/conv/bias" in msg
    assert "unexpected source key: trans.im0.extra.conv.weight" in msg
    assert "unexpected source key: unknown_module.weight" in msg
    assert "shape mismatch: decoder_layers.deconv.decoder.d0.conv5.weight" in msg


def test_backbone_fills_stages_1_to_4_only():
    model = dirl.DIRL(stem_features=64, stage_features=(64, 128, 256, 512, 512),
                      stage_blocks=(3, 4, 6, 3, 1), ggd_ch=4)
    variables = jax.device_get(jax.jit(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), False))())
    stages = {c: {"encoder": {f"encoder{i}": variables[c]["encoder"][f"encoder{i}"]
                              for i in range(1, 5)}} for c in ("params", "batch_stats")}
    # torchvision names: layer<N>.<i>.conv1 ... (official encoder<N> with 'layer' for 'encoder')
    tv = to_torch_layout(stages, lambda m: official_module_name(m).replace("encoder", "layer", 1))
    tv["conv1.weight"] = np.zeros((64, 3, 7, 7))  # torchvision's 7x7 stem and classifier: unused
    tv["bn1.weight"] = np.zeros(64)
    tv["fc.weight"], tv["fc.bias"] = np.zeros((1000, 512)), np.zeros(1000)
    fresh = jax.device_get(jax.jit(lambda: model.init(
        jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)), False))())
    loaded = assign_pretrained(TORCHVISION_RESNET34, tv, fresh)
    for i in range(1, 5):
        jax.tree.map(np.testing.assert_array_equal, loaded["params"]["encoder"][f"encoder{i}"],
                     variables["params"]["encoder"][f"encoder{i}"])
    for kept in ("inconv", "encoder5"):  # random init stays, as with the official pretrained=True
        jax.tree.map(np.testing.assert_array_equal, loaded["params"]["encoder"][kept],
                     fresh["params"]["encoder"][kept])
    jax.tree.map(np.testing.assert_array_equal, loaded["params"]["decoder"],
                 fresh["params"]["decoder"])


def test_missing_torch_names_the_extra(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ConversionError, match=r"pip install 'jirl\[torch\]'"):
        load_state_dict(str(tmp_path / "x.pth"))


def test_assign_rejects_a_key_used_twice():
    target = {"params": {"a": {"kernel": np.zeros((1, 1, 2, 2))}}}
    source = {"x.weight": np.zeros((2, 2, 1, 1)), "y.weight": np.zeros((2, 2, 1, 1))}
    with pytest.raises(ConversionError, match="used twice"):
        assign(source, target, [(r"x|y", "a")])


# ------------------------------------------------------------------ with torch (optional extra)


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="the optional extra jirl[torch] is not installed")


def test_load_state_dict_unwraps_and_strips_module_prefix(torch, tmp_path):
    path = str(tmp_path / "ck.pth")
    torch.save({"epoch": 3, "best_acc": 0.5, "state_dict": {
        "module.a.weight": torch.ones(2, 3), "module.a.bias": torch.zeros(2)}}, path)
    sd = load_state_dict(path)
    assert sorted(sd) == ["a.bias", "a.weight"] and sd["a.weight"].shape == (2, 3)


class _Custom:
    pass


def test_arbitrary_pickles_are_refused(torch, tmp_path):
    path = str(tmp_path / "evil.pth")
    torch.save({"state_dict": {"a": _Custom()}}, path)
    with pytest.raises(ConversionError, match="weights_only=True"):
        load_state_dict(path)


def test_convert_cli_writes_a_checkpoint_eval_accepts(torch, tmp_path):
    model = dirl.DIRL(**TINY)
    variables = _variables(model)
    sd = to_torch_layout(variables, official_module_name)
    enc = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()
           if k.startswith(("inconv", "inbn", "encoder"))}
    dec = {k: torch.from_numpy(np.array(v)) for k, v in sd.items() if k not in enc}
    torch.save({"state_dict": enc, "epoch": 1, "best_acc": 0.1}, tmp_path / "enc.pth")
    torch.save(dec, tmp_path / "dec.pth")
    cfg = str(tmp_path / "tiny.py")
    with open(cfg, "w") as f:
        f.write("from jirl.configs import dirl\n\ndef get_config(arg=None):\n    c = dirl.get_config()\n"
                f"    c.model.update({TINY!r})\n    return c\n")
    out = str(tmp_path / "converted")
    proc = subprocess.run([sys.executable, "-m", "jirl.convert", "dirl", "--encoder",
                           str(tmp_path / "enc.pth"), "--decoder", str(tmp_path / "dec.pth"),
                           "--output", out, "--config", cfg], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from jirl.runtime.checkpoints import restore_model

    restored = restore_model(out, jax.tree.map(np.zeros_like, variables))
    jax.tree.map(np.testing.assert_array_equal, restored, variables)
    proc = subprocess.run([sys.executable, "-m", "jirl.convert", "dirl", "--encoder",
                           str(tmp_path / "dec.pth"), "--decoder", str(tmp_path / "enc.pth"),
                           "--output", str(tmp_path / "swapped"), "--config", cfg], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "swap --encoder and --decoder" in proc.stderr
    # NaN-filled files converted with rc 0 into a model that predicts NaN; an --output naming a
    # file was a NotADirectoryError traceback: both are one line naming the thing now
    nan = {k: torch.full_like(v, float("nan")) if k.endswith("conv.weight") else v
           for k, v in dec.items()}
    torch.save(nan, tmp_path / "nan.pth")
    (tmp_path / "a_file").write_text("x")
    for decoder, output, message in [
            ("nan.pth", "nan_out", r"nan.pth: non-finite values \(NaN or inf\) in \d+ tensor\(s\): "
                                   r"[\w.]+conv.weight"),
            ("dec.pth", "a_file", r"--output .*a_file is a file; name a new directory")]:
        proc = subprocess.run([sys.executable, "-m", "jirl.convert", "dirl", "--encoder",
                               str(tmp_path / "enc.pth"), "--decoder", str(tmp_path / decoder),
                               "--output", str(tmp_path / output), "--config", cfg], cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and re.search(message, proc.stderr), proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and not os.path.exists(tmp_path / "nan_out")


def test_backbone_weights_config_loads_a_torchvision_file(torch, tmp_path):
    from jirl.configs import dirl as dirl_config

    cfg = dirl_config.get_config().model
    cfg.ggd_ch, cfg.stage_blocks = 4, (3, 4, 6, 3, 1)
    model = dirl.DIRL(cfg.stem_features, tuple(cfg.stage_features), tuple(cfg.stage_blocks), 4)
    variables = _variables(model)
    stages = {c: {"encoder": {f"encoder{i}": variables[c]["encoder"][f"encoder{i}"]
                              for i in range(1, 5)}} for c in ("params", "batch_stats")}
    tv = to_torch_layout(stages, lambda m: official_module_name(m).replace("encoder", "layer", 1))
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in tv.items()},
               tmp_path / "resnet34.pth")
    cfg.backbone_weights = str(tmp_path / "resnet34.pth")
    fresh = jax.device_get(jax.jit(lambda: model.init(
        jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)), False))())
    loaded = load_pretrained(dirl.SPEC.pretrained, fresh, cfg)
    jax.tree.map(np.testing.assert_array_equal, loaded["batch_stats"]["encoder"]["encoder3"],
                 variables["batch_stats"]["encoder"]["encoder3"])
    del tv["layer4.2.bn2.running_var"]
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in tv.items()},
               tmp_path / "broken.pth")
    cfg.backbone_weights = str(tmp_path / "broken.pth")
    with pytest.raises(ConversionError, match="missing .*encoder4/block2/bn2/var"):
        load_pretrained(dirl.SPEC.pretrained, fresh, cfg)

"""UNet baseline (MadisNet `networks/UNet.py`): shapes, jit agreement, gradients, official size,
the checkpoint importer's key rules and a replay of the official forward pass (no torch needed)."""

import json
import os
import re
import subprocess
import sys
import zlib

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jirl.convert import unet as convert
from jirl.models import get_spec, unet
from jirl.runtime.mapping import assign
from jirl.runtime.torch_io import ConversionError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "unet.npz")
TINY = dict(stem_features=8, stage_features=(8, 8, 16, 16, 24), stage_blocks=(1, 2, 1, 1, 1))
# Official parameter count of `UNet(in_ch=3, n_downs=5)` (backbone resnet34, nf 64), as built by
# MadisNet's train.py: `sum(p.numel() for p in UNet(in_ch=3, n_downs=5).parameters())` with the
# official networks/UNet.py and torch 2.13.0 (torchvision's resnet34 layers 1-4).
OFFICIAL_PARAMS = 56_720_193


def _init(model, shape, *args):
    """Initializes under jit (op-by-op initialization of a whole network is slow on CPU)."""
    return jax.jit(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), *args))()


@pytest.fixture(scope="module")
def tiny():
    """A narrow UNet, its variables and its jitted train-mode forward pass (compiled once per shape)."""
    m = unet.UNet(**TINY)
    train_fwd = jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))
    return m, _init(m, (2, 32, 32, 3)), train_fwd


def synthetic_tensor(key: str, shape) -> np.ndarray:
    """The fixture's weight for official state_dict `key` (torch layout `shape`), regenerated here.

    The official UNet cannot be made narrow (its widths are hard-coded), so its 56.7M weights are
    not stored: both the fixture script and this test derive them from the key with splitmix64
    (integer arithmetic only, identical on every platform). Conv kernels ~ U(+-sqrt(3/fan_in)),
    BN scales ~ U(0.5, 1.5), biases ~ U(-0.2, 0.2).
    """
    n = int(np.prod(shape))
    z = np.arange(n, dtype=np.uint64) + np.full(n, zlib.crc32(key.encode()), np.uint64) * np.uint64(
        0x9E3779B97F4A7C15)
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    u = (z >> np.uint64(11)).astype(np.float64) * 2.0**-53
    if len(shape) == 4:
        v = (2 * u - 1) * np.sqrt(3.0 / (shape[1] * shape[2] * shape[3]))
    elif key.endswith(".weight"):
        v = 0.5 + u
    else:
        v = 0.4 * u - 0.2
    return v.astype(np.float32).reshape(shape)


# ---------------------------------------------------------------- shapes, jit, gradients


@pytest.mark.parametrize("hw", [(32, 32), (64, 48)])
def test_output_shapes_and_ranges(tiny, hw):
    m, v, train_fwd = tiny
    x = jax.random.normal(jax.random.PRNGKey(0), (2, *hw, 3))
    out, _ = train_fwd(v, x)
    chex.assert_shape([out["mask"], out["logits"]], [(2, *hw, 1)] * 2)
    chex.assert_trees_all_close(out["mask"], jax.nn.sigmoid(out["logits"]))
    chex.assert_tree_all_finite(out)
    assert sorted(v["params"]["decoder"]) == ["bottleneck", "out_conv", "u0", "u1", "u2", "u3", "u4"]
    assert "bias" not in v["params"]["encoder"]["inconv"]  # the official in_conv has no bias
    chex.assert_shape(v["params"]["decoder"]["u0"]["up_conv"]["kernel"], (3, 3, 8, 8))
    chex.assert_shape(v["params"]["decoder"]["u4"]["conv"]["block1"]["conv"]["kernel"], (3, 3, 48, 16))


def test_rejects_bad_input_shapes():
    m = unet.UNet(**TINY)
    with pytest.raises(ValueError, match="multiples of 16"):
        jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 40, 32, 3))))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1))))


def test_jit_and_no_jit_agree(tiny):
    """The same train-mode forward pass (BN statistic updates included) op by op and under jit."""
    m, v, train_fwd = tiny
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 32, 32, 3))
    with jax.disable_jit():
        out, upd = m.apply(v, x, train=True, mutable=["batch_stats"])
    ref, ref_upd = train_fwd(v, x)
    chex.assert_trees_all_close(out, ref, atol=1e-5)
    chex.assert_trees_all_close(upd, ref_upd, atol=1e-5)
    assert not np.allclose(upd["batch_stats"]["decoder"]["u0"]["conv"]["block2"]["bn"]["mean"], 0)


def test_gradients_reach_every_parameter(tiny, params_without_gradient):
    m, v, _ = tiny
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    target = (jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 1)) > 0.7).astype(jnp.float32)
    cfg = ml_collections.ConfigDict({"lambda_ssim": 0.0, "lambda_iou": 1.0, "lambda_detection": 1.0})
    unused = params_without_gradient(m, v, x, lambda out: unet.objective(out, {"mask": target}, cfg)[0])
    assert not unused, unused


# ---------------------------------------------------------------- objective, registry, config


def test_objective_is_the_official_bce_plus_iou():
    from jirl import losses

    pred = jax.nn.sigmoid(jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 1)))
    target = (jax.random.uniform(jax.random.PRNGKey(1), (2, 32, 32, 1)) > 0.6).astype(jnp.float32)
    cfg = ml_collections.ConfigDict({"lambda_ssim": 0.0, "lambda_iou": 1.0, "lambda_detection": 1.0})
    total, logs = unet.objective({"mask": pred}, {"mask": target}, cfg)
    bce, iou, ssim = losses.bce(pred, target), losses.iou_loss(pred, target), losses.ssim(pred, target)
    np.testing.assert_allclose(total, bce + iou, rtol=1e-6)
    np.testing.assert_allclose(logs["ssim"], 1 - ssim, rtol=1e-6)  # logged, not summed
    cfg.lambda_ssim, cfg.lambda_detection = 1.0, 2.0
    np.testing.assert_allclose(unet.objective({"mask": pred}, {"mask": target}, cfg)[0],
                               2 * (bce + iou + 1 - ssim), rtol=1e-6)


def test_registry_and_configs():
    from jirl.configs import dirl as dirl_config
    from jirl.configs import unet as unet_config

    spec = get_spec("unet")
    assert spec is unet.SPEC and [p.kind for p in spec.pretrained] == ["resnet34"]
    full, quick, reference = (unet_config.get_config(), unet_config.get_config("quick"),
                              dirl_config.get_config("quick"))
    assert full.model.name == "unet" and (full.loss.lambda_ssim, full.loss.lambda_iou) == (0.0, 1.0)
    m = spec.build(quick.model)
    assert isinstance(m, unet.UNet) and m.stem_features == quick.model.stem_features
    for key in reference:  # quick trains exactly like configs/dirl.py:quick: comparable results
        if key not in ("model", "loss"):
            assert quick[key] == reference[key], key
    with pytest.raises(ValueError, match="unknown variant"):
        unet_config.get_config("paper")


@pytest.fixture(scope="module")
def official_shapes():
    m = unet.UNet()  # configs/unet.py's model: the official UNet(in_ch=3, n_downs=5)
    return m, jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), False))


def test_official_parameter_count(official_shapes):
    _, shapes = official_shapes
    assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == OFFICIAL_PARAMS


# ---------------------------------------------------------------- official weights and outputs


def _zeros_like(shapes):
    """Zero-memory stand-ins with the target's shapes and dtypes (the importer's target tree)."""
    return jax.tree.map(lambda s: np.broadcast_to(np.zeros((), s.dtype), s.shape), shapes)


def _fixture():
    with np.load(FIXTURE) as f:
        fx = dict(f)
    index = json.loads(str(fx["index"]))
    weights = {k: synthetic_tensor(k, tuple(s)) for k, s in index["synthetic"].items()}
    bounds = np.cumsum([0, *index["stored"].values()])
    stats = {name: {k: fx[name][a:b].astype(np.float32)
                    for k, a, b in zip(index["stored"], bounds[:-1], bounds[1:], strict=True)}
             for name in ("stored", "after_train")}
    return fx, weights, stats


def test_matches_the_official_forward_pass(official_shapes):
    """Official UNet(n_downs=5) at full width (tests/fixtures/README.md), eval and train mode."""
    model, shapes = official_shapes
    fx, weights, stats = _fixture()
    target = _zeros_like(shapes)
    variables = convert.unet_variables({**weights, **stats["stored"]}, target, where="fixture")
    x = jnp.asarray(fx["in/0"].astype(np.float32))

    @jax.jit
    def run(v, x):
        mask_eval = model.apply(v, x, False)["mask"]
        out, upd = model.apply(v, x, True, mutable=["batch_stats"])
        return mask_eval, out["mask"], upd["batch_stats"]

    mask_eval, mask_train, after = run(variables, x)
    np.testing.assert_allclose(np.asarray(mask_eval), fx["eval/0"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(mask_train), fx["train/0"], atol=1e-4, rtol=0)
    expected = assign(stats["after_train"], target, convert.RULES,
                              required_prefixes=["batch_stats/"], where="fixture")["batch_stats"]
    # the fixture stores the statistics in float16 (relative rounding <= 2**-11)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=2e-3, atol=1e-5),
                 after, expected)
    # torchvision resnet34 weights (`backbone_weights`) land where the official layers 1-4 do
    from jirl.models.resnet import TORCHVISION_RESNET34
    from jirl.runtime.pretrained import assign_pretrained

    official = {**weights, **stats["stored"]}
    resnet = {k.replace(f"downs.d{i}.", f"layer{i + 1}.", 1): v for k, v in official.items()
              for i in range(4) if k.startswith(f"downs.d{i}.")}
    loaded = assign_pretrained(TORCHVISION_RESNET34, resnet, target)
    for c in ("params", "batch_stats"):
        for i in range(1, 5):
            jax.tree.map(np.testing.assert_array_equal, loaded[c]["encoder"][f"encoder{i}"],
                         variables[c]["encoder"][f"encoder{i}"])


def test_importer_lists_missing_and_unexpected_keys(tiny):
    _, v, _ = tiny
    sd = {"in_conv.0.weight": np.zeros((8, 3, 3, 3), np.float32),
          "ups.u4.up.1.weight": np.zeros((24, 24, 3, 3), np.float32),
          "downs.d4.1.downsample.weight": np.zeros((24, 16, 1, 1), np.float32),
          "trans.im0.conv.weight": np.zeros((1,), np.float32)}
    with pytest.raises(ConversionError) as e:
        convert.unet_variables(sd, jax.device_get(v))
    msg = str(e.value)
    assert "unexpected source key: trans.im0.conv.weight" in msg
    assert "ups.u4.up.1.weight (-> params/decoder/u4/up_conv/kernel)" not in msg  # mapped, fits
    assert msg.count("missing (no source key): ") == 12 and re.search(r"\.\.\. and \d+ more missing", msg)
    assert "params/encoder/encoder5/block0/downsample_conv/kernel" not in msg  # d4.1 = block0


def test_load_official_refuses_a_checkpoint_of_another_model(tmp_path):
    torch = pytest.importorskip("torch", reason="the optional extra jirl[torch] is not installed")
    torch.save({"trans.im0.h_concat.conv.weight": torch.zeros(1)}, tmp_path / "dirl_decoder.pth")
    with pytest.raises(ConversionError, match="does not look like an official MadisNet UNet"):
        convert.load_official(str(tmp_path / "dirl_decoder.pth"), {})


def test_cli_has_a_unet_subcommand(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "taken").write_text("")
    proc = subprocess.run([sys.executable, "-m", "jirl.convert", "unet", "--checkpoint",
                           "g_epoch59.pth", "--output", str(tmp_path / "out")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "is not empty" in proc.stderr, proc.stderr[-2000:]

"""Replays block-level outputs of the official DIRL code (tests/fixtures/*.npz; no torch needed).

Each fixture holds the official block's random weights (`sd/<official key>`, with non-trivial BN
statistics), its inputs, its outputs in eval mode and in train mode (batch statistics), and the
BN running statistics after that train-mode forward. The weights go through the same key rules
as the checkpoint importer, so these tests also pin the importer's mapping.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jirl import losses
from jirl.convert import dirl as convert
from jirl.models import dirl
from jirl.models.layers import BatchNorm, Conv2d
from jirl.models.resnet import ResLayer
from jirl.runtime.mapping import assign

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
ATOL = 1e-4


def load(name):
    with np.load(os.path.join(FIXTURES, f"{name}.npz")) as f:
        return dict(f)


def official_weights(fx):
    return {k[3:]: v for k, v in fx.items() if k.startswith("sd/")}


def inputs(fx):
    n = len([k for k in fx if k.startswith("in/")])
    return [jnp.asarray(fx[f"in/{i}"]) for i in range(n)]


def outputs(fx, mode):
    n = len([k for k in fx if k.startswith(f"{mode}/")])
    return [fx[f"{mode}/{i}"] for i in range(n)]


def block_variables(module, args, fx, path):
    """Official weights -> the block's variables, through the importer's full-model key rules."""
    init = jax.jit(lambda: module.init(jax.random.PRNGKey(0), *args, False))()
    target = {c: _nest(path, init[c]) for c in ("params", "batch_stats")}
    full = assign(official_weights(fx), target, convert.ENCODER_RULES + convert.DECODER_RULES,
                  where="fixture")
    return {c: _get(path, full[c]) for c in ("params", "batch_stats")}


def _nest(path, tree):
    for key in reversed(path):
        tree = {key: tree}
    return tree


def _get(path, tree):
    for key in path:
        tree = tree[key]
    return tree


def check_block(name, module, path, call):
    fx = load(name)
    args = inputs(fx)
    variables = block_variables(module, call(args), fx, path)
    out_eval = module.apply(variables, *call(args), False)
    out_train, updates = module.apply(variables, *call(args), True, mutable=["batch_stats"])
    as_list = lambda o: list(o) if isinstance(o, tuple) else [o]  # noqa: E731
    for got, want in zip(as_list(out_eval), outputs(fx, "eval"), strict=True):
        np.testing.assert_allclose(np.asarray(got), want, atol=ATOL, rtol=ATOL)
    for got, want in zip(as_list(out_train), outputs(fx, "train"), strict=True):
        np.testing.assert_allclose(np.asarray(got), want, atol=ATOL, rtol=ATOL)
    after = {k[len("after_train/"):]: v for k, v in fx.items() if k.startswith("after_train/")}
    expected = assign({**official_weights(fx), **after},
                      {c: _nest(path, variables[c]) for c in ("params", "batch_stats")},
                      convert.ENCODER_RULES + convert.DECODER_RULES, where="fixture")
    np.testing.assert_allclose(
        np.concatenate([np.ravel(x) for x in jax.tree.leaves(updates["batch_stats"])]),
        np.concatenate([np.ravel(x) for x in jax.tree.leaves(_get(path, expected["batch_stats"]))]),
        atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,mode,path,take", [
    ("bfi_h2l", "h2l", ("decoder", "trans", "im0"), 2),
    ("bfi_hl2m", "hl2m", ("decoder", "trans", "im1"), 3),
    ("bfi_l2h", "l2h", ("decoder", "trans", "im4"), 2),
])
def test_bfi_matches_official(name, mode, path, take):
    check_block(name, dirl.BFI(5, mode), path, lambda a: (a[:take],))


def test_mda_matches_official():
    check_block("mda", dirl.MDA(), ("decoder", "mda_0"), lambda a: (a[0],))


def test_ggd_matches_official():
    check_block("ggd", dirl.GGD(6), ("decoder", "ggd"), lambda a: (a,))


def test_resnet_stage_matches_official():
    check_block("resnet_stage2", ResLayer(32, 2, 2), ("encoder", "encoder2"), lambda a: (a[0],))


class _StemAndStage1(nn.Module):
    """The encoder's 3x3 stem (conv with bias + BN + ReLU) and stage 1, named as in resnet.Encoder."""

    @nn.compact
    def __call__(self, x, train):
        h = Conv2d(64, 3, 1, 1, use_bias=True, name="inconv")(x)
        h = jax.nn.relu(BatchNorm(name="inbn")(h, train))
        return ResLayer(64, 3, 1, name="encoder1")(h, train)


def test_stem_and_stage1_match_official():
    check_block("stem_stage1", _StemAndStage1(), ("encoder",), lambda a: (a[0],))


def test_ssim_window_is_pytorch_ssims_bit_for_bit():
    np.testing.assert_array_equal(losses.gaussian_window_1d(11, 1.5), load("losses")["window"])


def test_losses_match_official():
    fx = load("losses")
    pred, target = jnp.asarray(fx["pred"]), jnp.asarray(fx["target"])
    np.testing.assert_allclose(float(losses.ssim(pred, target)), fx["ssim"], rtol=1e-5)
    np.testing.assert_allclose(float(losses.iou_loss(pred, target)), fx["iou"], rtol=1e-5)
    np.testing.assert_allclose(float(losses.bce(pred, target)), fx["bce"], rtol=1e-5)

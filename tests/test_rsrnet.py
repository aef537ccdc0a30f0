"""RSRNet: the RSR step's pure functions against numpy, the scanned recurrence against an unrolled
loop, gradients through all K steps, the whole model's shapes, switches, objective and config."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dirl as dirl_config
from configs import rsrnet as rsrnet_config
from jirl import losses
from jirl.models import available_models, get_spec, rsrnet

TINY = dict(stem_features=4, stage_features=(4, 4, 8, 8, 8), stage_blocks=(1,) * 5, head_features=8,
            hidden_features=8, embed_features=4, iterations=3)
TINY_RSR = dict(head_features=6, hidden_features=6, embed_features=3, scales=3, factor=4)


def _rng(seed):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------- the RSR step's pure functions


def test_background_feature_empty_background_is_global_mean():
    style = _rng(0).normal(size=(2, 5, 4, 3)).astype(np.float32)
    f_bg = rsrnet.background_feature(jnp.asarray(style), jnp.zeros((2, 5, 4, 1)))  # sigma(0) = 0.5
    np.testing.assert_allclose(np.asarray(f_bg), style.mean((1, 2)), rtol=1e-5, atol=1e-6)


def test_background_feature_partial_mask_matches_numpy():
    style = _rng(1).normal(size=(2, 5, 4, 3)).astype(np.float32)
    logits = _rng(2).normal(size=(2, 5, 4, 1)).astype(np.float32)
    logits[1] = 1.0  # the second image has no background pixel: global mean
    f_bg = np.asarray(rsrnet.background_feature(jnp.asarray(style), jnp.asarray(logits)))
    bg = 1 / (1 + np.exp(-logits[0, ..., 0])) < 0.5
    assert 0 < bg.sum() < bg.size
    np.testing.assert_allclose(f_bg[0], style[0][bg].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(f_bg[1], style[1].mean((0, 1)), rtol=1e-5, atol=1e-6)


def _box_mean_reference(x, r):
    """Mean over the valid pixels of each (2r+1)^2 window (count_include_pad=False)."""
    out = np.zeros_like(x)
    h, w = x.shape[1:3]
    for i in range(h):
        for j in range(w):
            out[:, i, j] = x[:, max(i - r, 0):i + r + 1, max(j - r, 0):j + r + 1].mean((1, 2))
    return out


def _cosine_reference(a, b):
    na = np.maximum(np.linalg.norm(a, axis=-1), 1e-8)
    nb = np.maximum(np.linalg.norm(b, axis=-1), 1e-8)
    return (a * b).sum(-1) / (na * nb)


def test_similarity_map_matches_numpy():
    style = _rng(3).normal(size=(2, 6, 5, 4)).astype(np.float32)
    f_bg = _rng(4).normal(size=(2, 4)).astype(np.float32)
    s = np.asarray(rsrnet.similarity_map(jnp.asarray(style), jnp.asarray(f_bg), scales=3))
    chex.assert_shape(s, (2, 6, 5, 3))
    # l = 0 is the plain per-pixel cosine similarity
    np.testing.assert_allclose(s[..., 0], _cosine_reference(style, f_bg[:, None, None]), atol=1e-5)
    for r in (1, 2):
        box = _box_mean_reference(style, r)
        np.testing.assert_allclose(np.asarray(rsrnet.box_mean(jnp.asarray(style), r)), box, atol=1e-6)
        ref = _cosine_reference(box, f_bg[:, None, None])
        np.testing.assert_allclose(s[..., r], ref, atol=1e-5)
    # a zero feature has cosine 0 (torch's eps clamps each norm), not NaN
    zero = rsrnet.cosine_similarity(jnp.zeros((1, 3)), jnp.ones((1, 3)))
    np.testing.assert_array_equal(np.asarray(zero), 0.0)
    grad = jax.grad(lambda x: rsrnet.cosine_similarity(x, jnp.ones((1, 3))).sum())(jnp.zeros((1, 3)))
    chex.assert_tree_all_finite(grad)


def _convex_reference(x, weights, f):
    """RAFT's `upsample_flow` transcribed per pixel, with edge padding."""
    b, h, w, c = x.shape
    wts = weights.reshape(b, h, w, 9, f, f)
    wts = np.exp(wts - wts.max(3, keepdims=True))
    wts /= wts.sum(3, keepdims=True)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    out = np.zeros((b, h * f, w * f, c), np.float64)
    for i in range(h):
        for j in range(w):
            nb = np.stack([xp[:, i + dy, j + dx] for dy in range(3) for dx in range(3)], 1)  # b,9,c
            for u in range(f):
                for v in range(f):
                    out[:, i * f + u, j * f + v] = (wts[:, i, j, :, u, v, None] * nb).sum(1)
    return out


def test_convex_upsample_matches_raft_and_keeps_constants():
    f = 4
    x = _rng(5).normal(size=(2, 3, 4, 1)).astype(np.float32)
    weights = _rng(6).normal(size=(2, 3, 4, 9 * f * f)).astype(np.float32)
    up = np.asarray(rsrnet.convex_upsample(jnp.asarray(x), jnp.asarray(weights), f))
    chex.assert_shape(up, (2, 12, 16, 1))
    np.testing.assert_allclose(up, _convex_reference(x, weights, f), rtol=1e-5, atol=1e-5)
    const = rsrnet.convex_upsample(jnp.full((2, 3, 4, 1), -2.5), jnp.asarray(3 * weights), f)
    np.testing.assert_allclose(np.asarray(const), -2.5, rtol=1e-6)  # borders included


# ---------------------------------------------------------------- the scanned recurrence


F4 = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 5))
K = 4
TARGET = (jax.random.uniform(jax.random.PRNGKey(2), (2, 12, 16, 1)) > 0.5).astype(jnp.float32)


def _key(seed=1):
    """An 'rbg' PRNG key: initializing with it compiles ~3x faster on CPU than threefry."""
    return jax.random.key(seed, impl="rbg")


@functools.cache
def _rsr(**kw):
    return rsrnet.RSR(**{**TINY_RSR, "iterations": K, **kw})


@functools.cache
def _rsr_params():
    return jax.jit(_rsr().init)(_key(), F4)


def _unrolled_forward(variables, f4):
    """The same cell with the same parameters, as a Python loop over K steps."""
    m = _rsr()
    style, content, carry = m.apply(variables, f4, method=rsrnet.RSR.initial_state)
    cell = rsrnet.RSRCell(**m.cell_config())
    outs = []
    for _ in range(K):
        carry, up = cell.apply({"params": variables["params"]["cell"]}, carry, style, content)
        outs.append(up)
    return jnp.stack(outs)


SCAN_VARIANTS = {"scan": {}, "remat": dict(remat=True), "unroll": dict(unroll=K)}


def _forward(variant: str):
    """The RSR forward pass as nn.scan (with the options of SCAN_VARIANTS) or as a Python loop."""
    return _unrolled_forward if variant == "python_loop" else _rsr(**SCAN_VARIANTS[variant]).apply


@functools.cache
def _jit_forward(variant: str = "scan"):
    return jax.jit(_forward(variant))


@functools.cache
def _step_gradients(variant: str = "scan"):
    """d/d params of [loss on M-bar^1, loss on M-bar^K] (one compile for both)."""
    forward = _forward(variant)

    def step_losses(params):
        p = jax.nn.sigmoid(forward({"params": params}, F4)[jnp.asarray([0, K - 1])])
        return jnp.stack([losses.bce(p[0], TARGET), losses.bce(p[1], TARGET)])

    return jax.jit(jax.jacrev(step_losses))(_rsr_params()["params"])


def test_scan_equals_unrolled_loop_and_shares_parameters():
    v = _rsr_params()
    # nn.scan broadcasts the parameters: one set for all steps, no leading K axis
    gru = v["params"]["cell"]["gru"]["conv_z"]["kernel"]
    chex.assert_shape(gru, (3, 3, 6 + 2 * 3 + 6 + 1, 6))  # over [H; mask emb, S emb, F_c, M]
    scanned = _jit_forward()(v, F4)
    chex.assert_shape(scanned, (K, 2, 12, 16, 1))
    chex.assert_trees_all_close(scanned, _jit_forward("python_loop")(v, F4), atol=1e-5)
    assert float(jnp.abs(scanned[0] - scanned[-1]).max()) > 1e-4  # the iterations do something


def test_iteration_count_changes_only_the_number_of_steps():
    v = _rsr_params()
    fewer = jax.jit(rsrnet.RSR(**{**TINY_RSR, "iterations": 2}).apply)(v, F4)
    chex.assert_shape(fewer, (2, 2, 12, 16, 1))
    chex.assert_trees_all_close(fewer, _jit_forward()(v, F4)[:2], atol=1e-6)


def _max_abs(tree):
    return max(float(jnp.abs(x).max()) for x in jax.tree.leaves(tree))


def test_gradients_flow_through_all_steps_like_the_unrolled_loop():
    grads = _step_gradients()
    first = jax.tree.map(lambda g: g[0], grads)
    last = jax.tree.map(lambda g: g[1], grads)
    assert _max_abs(first["cell"]["gru"]) > 0
    # H^0 enters step 1 only: the last mask's loss reaches it back through K - 1 GRU steps
    assert _max_abs(last["hidden_init"]) > 0
    assert _max_abs(jax.tree.map(lambda a, b: a - b, first["cell"], last["cell"])) > 0
    chex.assert_trees_all_close(grads, _step_gradients("python_loop"), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("variant", ["remat", "unroll"])
def test_remat_and_unroll_give_the_same_outputs_and_gradients(variant):
    v = _rsr_params()
    chex.assert_trees_all_close(_jit_forward(variant)(v, F4), _jit_forward()(v, F4), atol=1e-6)
    chex.assert_trees_all_close(_step_gradients(variant), _step_gradients(), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- the whole model


@functools.cache
def _model():
    m = rsrnet.RSRNet(**TINY)
    return m, jax.jit(lambda: m.init(_key(0), jnp.zeros((2, 32, 32, 3))))()


def _image(shape=(2, 32, 32, 3)):
    return jax.random.normal(jax.random.PRNGKey(3), shape)


@pytest.mark.parametrize("hw", [(32, 32), (64, 32)])
def test_output_shapes_and_ranges(hw):
    m, v = _model()
    out = jax.jit(lambda v, x: m.apply(v, x))(v, _image((2, *hw, 3)))
    h, w = hw
    chex.assert_shape([out["mask"], out["logits"], out["mask_dec"], out["mask_rsr"]], (2, h, w, 1))
    chex.assert_shape(out["rsr_masks"], (3, 2, h, w, 1))
    chex.assert_tree_all_finite(out)
    chex.assert_trees_all_close(out["mask_rsr"], out["rsr_masks"][-1])
    for k in ("mask", "mask_dec", "mask_rsr", "rsr_masks"):
        assert 0 <= float(out[k].min()) and float(out[k].max()) <= 1, k
    chex.assert_trees_all_close(jax.nn.sigmoid(out["logits"]), out["mask"], atol=1e-5)
    # M_fnl is a convex combination of M_dec and M_rsr
    lo, hi = jnp.minimum(out["mask_dec"], out["mask_rsr"]), jnp.maximum(out["mask_dec"], out["mask_rsr"])
    assert bool(jnp.all((out["mask"] >= lo - 1e-6) & (out["mask"] <= hi + 1e-6)))
    assert list(rsrnet.eval_masks(out)) == ["M_fnl", "M_rsr", "M_dec"]
    assert rsrnet.SPEC.primary_mask == "M_fnl"  # the mask that picks the best checkpoint


def test_rejects_bad_input_shapes():
    m = rsrnet.RSRNet(**TINY)
    with pytest.raises(ValueError, match="multiples of 16"):
        jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 40, 32, 3)))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 1)))


class JitAgreementTest(chex.TestCase):
    """The same forward pass (train mode, BN statistic updates included) with and without jit."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_no_jit_agree(self):
        m, v = _model()
        x = _image((1, 32, 32, 3))

        @self.variant
        def fwd(v, x):
            return m.apply(v, x, train=True, mutable=["batch_stats"])

        ref = jax.jit(lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"]))(v, x)
        chex.assert_trees_all_close(fwd(v, x), ref, atol=1e-5)


def test_every_parameter_gets_a_gradient(params_without_gradient):
    m, v = _model()
    x = _image()
    target = (jax.random.uniform(jax.random.PRNGKey(4), (2, 32, 32, 1)) > 0.7).astype(jnp.float32)
    cfg = rsrnet_config.get_config().loss
    unused = params_without_gradient(m, v, x, lambda out: rsrnet.objective(out, {"mask": target}, cfg)[0])
    assert not unused, unused
    assert "gate" in v["params"] and "upsample_head" in v["params"]["rsr"]["cell"]


def test_objective_weights_steps_by_decay_powers():
    k = 4
    target = (jax.random.uniform(jax.random.PRNGKey(5), (2, 16, 16, 1)) > 0.5).astype(jnp.float32)
    probs = jax.random.uniform(jax.random.PRNGKey(6), (k + 1, 2, 16, 16, 1), minval=0.05, maxval=0.95)
    outputs = {"mask": probs[0], "rsr_masks": probs[1:]}
    cfg = rsrnet_config.get_config().loss
    total, logs = rsrnet.objective(outputs, {"mask": target}, cfg)
    manual = losses.mask_loss(probs[0], target)[0] + sum(
        0.8 ** (k - i) * losses.mask_loss(probs[i], target)[0] for i in range(1, k + 1))
    np.testing.assert_allclose(float(total), float(manual), rtol=1e-5)
    assert rsrnet.step_weights(3) == [1.0, 0.8 ** 2, 0.8, 1.0]
    assert set(logs) == {"total", "bce", "ssim", "iou"}


SWITCHES = [dict(use_gru=False), dict(use_msm=False), dict(content_from="style"),
            dict(upsample="bilinear"), dict(combine="average"), dict(similarity_only=True)]


def _param_shapes(**kw):
    m = rsrnet.RSRNet(**{**TINY, **kw})
    shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    return jax.tree.map(lambda s: s.shape, shapes)


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_every_ablation_switch_changes_the_model(switch):
    assert _param_shapes(**switch) != _param_shapes()


def test_bad_switch_values_and_bfloat16_compute():
    for kw, what in ((dict(upsample="nearest"), "upsample"), (dict(combine="max"), "combine"),
                     (dict(content_from="image"), "content_from"), (dict(iterations=0), "iteration")):
        with pytest.raises(ValueError, match=what):
            _param_shapes(**kw)
    m, v = _model()
    bf16 = rsrnet.RSRNet(**TINY, dtype=jnp.bfloat16)  # carry dtypes stay fixed through the scan
    out = jax.eval_shape(functools.partial(bf16.apply, train=True, mutable=["batch_stats"]), v,
                         jnp.zeros((1, 32, 32, 3)))[0]
    assert {o.dtype for o in jax.tree.leaves(out)} == {jnp.dtype(jnp.float32)}


# ---------------------------------------------------------------- config and registry


def _plain(x):
    return x.to_dict() if hasattr(x, "to_dict") else x


def test_configs_and_registry():
    assert "rsrnet" in available_models() and get_spec("rsrnet").eval_masks is rsrnet.eval_masks
    full = rsrnet_config.get_config()
    assert (full.model.iterations, full.model.head_features, full.model.hidden_features) == (12, 256, 128)
    assert (full.batch_size, full.num_epochs, full.data.crop_size) == (32, 60, 224)
    assert tuple(full.optimizer.decay_epochs) == (30, 40, 50, 55)
    quick = rsrnet_config.get_config("quick")
    reference = dirl_config.get_config("quick")
    for key in reference:  # the same data, optimizer, schedule and evaluation as DIRL's quick
        if key not in ("model", "loss"):
            assert _plain(quick[key]) == _plain(reference[key]), key
    assert quick.model.iterations == 12 and quick.model.stage_features == (16, 32, 64, 96, 96)
    shapes = jax.eval_shape(
        get_spec("rsrnet").build(quick.model).init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
    assert set(shapes["params"]) == {"encoder", "rsr", "decoder", "gate"}
    with pytest.raises(ValueError, match="unknown variant 'fast'"):
        rsrnet_config.get_config("fast")


def test_unroll_zero_means_full_unroll_on_cpu_else_the_given_factor():
    assert jax.default_backend() == "cpu"
    assert rsrnet.scan_unroll(0, 12) == 12
    assert rsrnet.scan_unroll(3, 12) == 3
    assert rsrnet.build(rsrnet_config.get_config("quick").model).unroll == 12


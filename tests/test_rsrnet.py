"""RSRNet: the RSR step's pure functions against numpy, the scanned recurrence against an unrolled
loop, gradients through all K steps, the whole model's shapes, switches, objective and config."""

import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jirl.configs import dirl as dirl_config
from jirl.configs import rsrnet as rsrnet_config

from jirl import losses
from jirl.models import available_models, get_spec, layers, rsrnet

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


@functools.cache
def _outputs(hw=(32, 32), **switch):
    """RSRNet(**TINY, **switch) in eval mode on an image batch of size hw, with _model()'s variables
    (those that the switch keeps)."""
    _, v = _model()
    params = {k: p for k, p in v["params"].items() if k in _param_shapes(**switch)}
    m = rsrnet.RSRNet(**TINY, **switch)
    return jax.jit(m.apply)({"params": params, "batch_stats": v["batch_stats"]}, _image((2, *hw, 3)))


@pytest.mark.parametrize("hw", [(32, 32), (64, 32)])
def test_output_shapes_and_ranges(hw):
    out = _outputs(hw)
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


# ---------------------------------------------------------------- the ablation switches (Table 2)
#
# Each switch is checked for what the module docstring says it does. The switches reach the RSR
# module through RSRNet: `_traced` records the fields of the RSR that RSRNet(**switch) builds, and
# the step checks run the RSRCell of exactly that RSR on small random inputs.


def _param_shapes(**kw):
    return _traced(**kw)[0]


@functools.cache
def _traced(**switch):
    """(parameter shapes of RSRNet(**TINY, **switch), the fields of the RSR module it builds)."""
    m = rsrnet.RSRNet(**{**TINY, **switch})
    fields = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, rsrnet.RSR) and context.method_name == "__call__":
            fields.update({f.name: getattr(context.module, f.name) for f in dataclasses.fields(rsrnet.RSR)
                           if f.name not in ("parent", "name")})
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    return jax.tree.map(lambda s: s.shape, shapes), fields


# the RSR state and features of a 32 px image (f4 is 4x4) at TINY's widths
E, L, HID, HEAD = TINY["embed_features"], rsrnet.RSRNet.scales, TINY["hidden_features"], TINY["head_features"]
STYLE = jax.random.normal(jax.random.PRNGKey(10), (2, 4, 4, HEAD))  # F_s
CONTENT = jax.random.normal(jax.random.PRNGKey(11), (2, 4, 4, HEAD))  # F_c
HIDDEN = jnp.tanh(jax.random.normal(jax.random.PRNGKey(12), (2, 4, 4, HID)))
MASK = jax.random.normal(jax.random.PRNGKey(13), (2, 4, 4, 1))  # logits of both signs
F4_TINY = jax.random.normal(jax.random.PRNGKey(14), (2, 4, 4, TINY["stage_features"][3]))


def _rsr_of(**switch):
    return rsrnet.RSR(**_traced(**switch)[1])


@functools.cache
def _cell(**switch):
    """The RSRCell that RSRNet(**TINY, **switch) scans, and its parameters."""
    cell = rsrnet.RSRCell(**_rsr_of(**switch).cell_config())
    content = None if cell.similarity_only else CONTENT
    return cell, cell.init(_key(5), (HIDDEN, MASK), STYLE, content).get("params", {})


def _step(switch, h=HIDDEN, m=MASK):
    """One RSR step: ((H', M'), full-resolution logits of M'), {child module of the cell: the
    positional arguments it was called with}, the cell's parameters."""
    cell, params = _cell(**switch)
    calls = {}

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            calls.setdefault(context.module.name, args)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        out = cell.apply({"params": params}, (h, m), STYLE, None if cell.similarity_only else CONTENT)
    return out, calls, params


def _conv3x3(features, params, x):
    return layers.Conv2d(features, 3, 1, 1).apply({"params": params}, x)


def _initial_state(**switch):
    """(F_s, F_c or None, (H^0, M^0)) and the parameters of the RSR that RSRNet(**switch) builds."""
    rsr = _rsr_of(**switch)
    params = rsr.init(_key(6), F4_TINY, method=rsrnet.RSR.initial_state)
    return rsr.apply(params, F4_TINY, method=rsrnet.RSR.initial_state), params["params"]


def _differ(a, b) -> float:
    return float(jnp.abs(a - b).max())


def test_default_switches():
    """The defaults are the full model; the tests below compare each switch against them."""
    shapes, fields = _traced()
    assert (fields["use_gru"], fields["scales"], fields["content_from"], fields["similarity_only"],
            fields["upsample"]) == (True, L, "content", False, "convex")
    assert {"content_head", "hidden_init", "style_head"} <= set(shapes["rsr"])
    assert {"gru", "mask_embed", "sim_embed", "upsample_head"} <= set(shapes["rsr"]["cell"])
    assert "gate" in shapes


def test_use_gru_false_replaces_the_gru_by_a_state_without_recurrence():
    shapes, _ = _traced(use_gru=False)
    assert "gru" not in shapes["rsr"]["cell"] and "hidden_init" not in shapes["rsr"]
    (h, m), up = _step(dict(use_gru=False))[0]
    # H = tanh(conv3x3(ReLU(conv3x3(x)))) of the step's input x alone: the previous H plays no part
    chex.assert_trees_all_equal(_step(dict(use_gru=False), h=-HIDDEN)[0], ((h, m), up))
    _, calls, params = _step(dict(use_gru=False))
    x = calls["state_conv0"][0]
    chex.assert_shape(x, (2, 4, 4, E + E + HEAD + 1))  # [mask emb, S emb, F_c, sigma(M)]
    ref = jnp.tanh(_conv3x3(HID, params["state_conv1"], nn.relu(_conv3x3(HID, params["state_conv0"], x))))
    chex.assert_trees_all_close(h, ref, atol=1e-6)
    # (with the GRU, the previous state matters)
    assert _differ(_step({})[0][0][0], _step({}, h=-HIDDEN)[0][0][0]) > 1e-3


def test_use_msm_false_removes_the_similarity_map():
    """Table 2, row 6: only F_c and the mask (its embedding and itself) reach the GRU."""
    shapes, fields = _traced(use_msm=False)
    assert fields["scales"] == 0
    assert "sim_embed" not in shapes["rsr"]["cell"] and "style_head" not in shapes["rsr"]
    _, calls, params = _step(dict(use_msm=False))
    x = calls["gru"][1]
    p = jax.nn.sigmoid(MASK)
    chex.assert_trees_all_close(
        x, jnp.concatenate([nn.relu(_conv3x3(E, params["mask_embed"], p)), CONTENT, p], -1), atol=1e-6)


def test_scales_one_is_a_single_scale_msm():
    shapes, fields = _traced(scales=1)
    assert fields["scales"] == 1
    assert shapes["rsr"]["cell"]["sim_embed"]["kernel"] == (3, 3, 1, E)
    assert _param_shapes()["rsr"]["cell"]["sim_embed"]["kernel"] == (3, 3, L, E)
    sim = np.asarray(_step(dict(scales=1))[1]["sim_embed"][0])
    chex.assert_shape(sim, (2, 4, 4, 1))
    # S_0 = cos(F_s, f_bg), f_bg = the mean of F_s over the pixels with sigma(M) < 0.5
    style, background = np.asarray(STYLE), np.asarray(MASK)[..., 0] < 0
    assert all(0 < b.sum() < b.size for b in background)
    f_bg = np.stack([s[b].mean(0) for s, b in zip(style, background, strict=True)])
    np.testing.assert_allclose(sim[..., 0], _cosine_reference(style, f_bg[:, None, None]), atol=1e-5)


def test_content_from_style_feeds_f_s_where_f_c_was():
    shapes, _ = _traced(content_from="style")
    assert "content_head" not in shapes["rsr"]
    (style, content, (h0, m0)), params = _initial_state(content_from="style")
    chex.assert_trees_all_equal(content, style)
    chex.assert_trees_all_close(
        style, rsrnet.ConvHead(HEAD, HEAD).apply({"params": params["style_head"]}, F4_TINY), atol=1e-6)
    # the hidden initialisation sees F_s: H^0 = tanh(conv3x3(F_s))
    chex.assert_trees_all_close(h0, jnp.tanh(_conv3x3(HID, params["hidden_init"], style)), atol=1e-6)
    assert bool(jnp.all(jnp.isneginf(m0)))  # M^0 = 0 as a logit
    # (by default F_c is a head of its own, and H^0 is computed from it)
    (style, content, (h0, _)), params = _initial_state()
    assert _differ(content, style) > 1e-2
    chex.assert_trees_all_close(h0, jnp.tanh(_conv3x3(HID, params["hidden_init"], content)), atol=1e-6)


def test_similarity_only_iterates_the_plain_similarity_map_as_the_mask():
    """Table 2, row 3: M^k = (1 - S_0) / 2 with f_bg from M^{k-1}; no GRU, no residual, bilinear x8."""
    shapes, _ = _traced(similarity_only=True)
    assert set(shapes["rsr"]) == {"style_head"}  # F_s is all that RSR learns
    (h, m), up = _step(dict(similarity_only=True))[0]
    style, background = np.asarray(STYLE), np.asarray(MASK)[..., 0] < 0
    f_bg = np.stack([s[b].mean(0) for s, b in zip(style, background, strict=True)])
    s0 = _cosine_reference(style, f_bg[:, None, None])
    np.testing.assert_allclose(np.asarray(jax.nn.sigmoid(m))[..., 0], (1 - s0) / 2, atol=1e-5)
    chex.assert_trees_all_equal(h, HIDDEN)
    chex.assert_trees_all_close(up, layers.resize_bilinear(m, (32, 32), align_corners=True), atol=1e-6)
    # M^{k-1} matters only through the background it defines: 3 M gives the same step
    chex.assert_trees_all_equal(_step(dict(similarity_only=True), m=3 * MASK)[0], ((h, m), up))
    # the next background is where the pixels resemble f_bg (S_0 > 0)
    np.testing.assert_array_equal(np.asarray(m)[..., 0] < 0, s0 > 0)


def test_the_first_step_starts_from_an_all_zero_mask():
    """M^0 = 0 (§3.2): every pixel is background (f_bg = the global mean), the GRU sees sigma(M) = 0,
    and the first update is the mask: M^1 = Delta M^1; later steps add, M^k = M^{k-1} + Delta M^k."""
    (_, _, (_, m0)), _ = _initial_state()
    empty = jnp.full_like(MASK, -jnp.inf)
    chex.assert_trees_all_equal(m0, empty)
    f_bg = rsrnet.background_feature(STYLE, empty)
    np.testing.assert_allclose(np.asarray(f_bg), np.asarray(STYLE).mean((1, 2)), rtol=1e-5, atol=1e-6)
    ((h, m), _), calls, params = _step({}, m=empty)
    np.testing.assert_array_equal(np.asarray(calls["mask_embed"][0]), 0)
    chex.assert_trees_all_close(calls["sim_embed"][0], rsrnet.similarity_map(STYLE, f_bg, L), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(calls["gru"][1][..., -1]), 0)
    delta = rsrnet.ConvHead(2 * HID, 1).apply({"params": params["delta_head"]}, h)
    chex.assert_trees_all_close(m, delta, atol=1e-6)
    chex.assert_tree_all_finite(m)
    ((h, m), _), _, _ = _step({})
    delta = rsrnet.ConvHead(2 * HID, 1).apply({"params": params["delta_head"]}, h)
    chex.assert_trees_all_close(m, MASK + delta, atol=1e-6)


def test_bilinear_upsample_is_align_corners_bilinear_x8_of_the_logits():
    shapes, fields = _traced(upsample="bilinear")
    assert "upsample_head" not in shapes["rsr"]["cell"]
    assert fields["factor"] == 8
    (_, m), up = _step(dict(upsample="bilinear"))[0]
    chex.assert_shape([m, up], [(2, 4, 4, 1), (2, 32, 32, 1)])
    chex.assert_trees_all_close(up, layers.resize_bilinear(m, (32, 32), align_corners=True), atol=1e-6)
    # (convex upsampling is not bilinear)
    (_, m), up = _step({})[0]
    assert _differ(up, layers.resize_bilinear(m, (32, 32), align_corners=True)) > 1e-3


def test_combine_average_is_the_mean_of_the_two_masks():
    shapes, _ = _traced(combine="average")
    assert "gate" not in shapes
    assert {k: v for k, v in _param_shapes().items() if k != "gate"} == shapes
    out = _outputs(combine="average")
    chex.assert_trees_all_close(out["mask"], (out["mask_dec"] + out["mask_rsr"]) / 2, atol=1e-7)
    learned = _outputs()
    chex.assert_trees_all_close({k: out[k] for k in ("mask_dec", "mask_rsr", "rsr_masks")},
                                {k: learned[k] for k in ("mask_dec", "mask_rsr", "rsr_masks")}, atol=1e-6)
    # (the learned gate is not the average)
    assert _differ(learned["mask"], (learned["mask_dec"] + learned["mask_rsr"]) / 2) > 1e-4


def test_combine_none_outputs_the_decoder_mask():
    """Table 2, row 2: no combination; M_dec is the output (and what picks the best checkpoint)."""
    shapes, _ = _traced(combine="none")
    assert "gate" not in shapes
    out = _outputs(combine="none")
    chex.assert_trees_all_equal(out["mask"], out["mask_dec"])
    chex.assert_trees_all_close(jax.nn.sigmoid(out["logits"]), out["mask"], atol=1e-6)
    chex.assert_trees_all_close(out["mask_dec"], _outputs()["mask_dec"], atol=1e-6)


def _area_mean(guide, size):
    """[B,H,W,1] averaged over (H/size)^2 blocks (reference for the guide at a decoder level)."""
    b, h, w, _ = guide.shape
    f = h // size
    return guide.reshape(b, h // f, f, w // f, f, 1).mean((2, 4))


def _decoder_calls(**switch):
    """{decoder block name: (args, output)} of RSRNet(**TINY, **switch) on _image(), and its outputs."""
    m = rsrnet.RSRNet(**TINY, **switch)
    v = jax.jit(m.init)(_key(7), _image())
    calls = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and context.module.name in ("bottleneck", "u4", "u3", "u0"):
            if isinstance(context.module.parent, rsrnet.GuidedDecoder):
                calls[context.module.name] = (args, out)
        return out

    with nn.intercept_methods(record):
        out = m.apply(v, _image())
    return calls, out


def test_concat_guidance_appends_m_rsr_to_every_skip():
    """§3.3 "We feed M_rsr into the decoder by concatenation": one more channel on f1..f5."""
    calls, out = _decoder_calls()
    guide = np.asarray(out["mask_rsr"])
    widths = (TINY["stem_features"], *TINY["stage_features"])
    bottleneck_in = np.asarray(calls["bottleneck"][0][0])
    chex.assert_shape(bottleneck_in, (2, 2, 2, widths[4] + 1))  # f5 at 1/16 of 32 px
    np.testing.assert_allclose(bottleneck_in[..., -1:], _area_mean(guide, 2), atol=1e-6)
    for name, level, size in (("u3", 3, 4), ("u0", 0, 32)):
        skip = np.asarray(calls[name][0][1])
        chex.assert_shape(skip, (2, size, size, widths[level] + 1))
        np.testing.assert_allclose(skip[..., -1:], _area_mean(guide, size), atol=1e-6)
    # the block outputs pass on unscaled
    chex.assert_trees_all_equal(calls["u4"][0][0], calls["bottleneck"][1])


def test_residual_attention_guidance_scales_every_decoder_output():
    calls, out = _decoder_calls(guidance="residual_attention")
    guide = np.asarray(out["mask_rsr"])
    chex.assert_shape(calls["bottleneck"][0][0], (2, 2, 2, TINY["stage_features"][4]))  # no extra channel
    chex.assert_shape(calls["u0"][0][1], (2, 32, 32, TINY["stem_features"]))
    np.testing.assert_allclose(np.asarray(calls["u4"][0][0]),
                               np.asarray(calls["bottleneck"][1]) * (1 + _area_mean(guide, 2)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(calls["u3"][0][0]),
                               np.asarray(calls["u4"][1]) * (1 + _area_mean(guide, 2)), atol=1e-5)


def test_bad_switch_values_and_bfloat16_compute():
    for kw, what in ((dict(upsample="nearest"), "upsample"), (dict(combine="max"), "combine"),
                     (dict(guidance="multiply"), "guidance"),
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
    with pytest.raises(ValueError, match="conflicting variants 'row2,row3'"):
        rsrnet_config.get_config("row2,row3")
    assert full.model.guidance == "concat" and full.model.combine == "learned"


# Table 2's rows as the paper describes them (§4.4), written out independently of configs/rsrnet.py.
TABLE2 = {
    "row2": dict(combine="none"),
    "row3": dict(similarity_only=True, combine="none"),
    "row4": dict(combine="average"),
    "row5": dict(use_gru=False),
    "row6": dict(use_msm=False),
    "row7": dict(content_from="style"),
    "row8": dict(upsample="bilinear"),
    "row9": dict(),
}


@pytest.mark.parametrize("row", [f"row{i}" for i in range(1, 10)])
def test_table2_rows_are_config_variants(row):
    base = rsrnet_config.get_config("quick")
    c = rsrnet_config.get_config(f"quick,{row}")
    for key in base:  # only the model (and for row 1 its loss) changes
        if key not in ("model", "loss"):
            assert _plain(c[key]) == _plain(base[key]), key
    if row == "row1":  # the UNet of the same encoder, with RSRNet's bce + (1 - ssim) + iou
        assert c.model.name == "unet"
        for key in ("stem_features", "stage_features", "stage_blocks", "backbone_weights"):
            assert c.model[key] == base.model[key], key
        assert (c.loss.lambda_ssim, c.loss.lambda_iou) == (1.0, 1.0)
    else:
        changed = {k: c.model[k] for k in base.model if c.model[k] != base.model[k]}
        assert changed == TABLE2[row]
        assert _plain(c.loss) == _plain(base.loss)
    assert _plain(rsrnet_config.get_config(row).model) == _plain(
        rsrnet_config.table2_row(rsrnet_config.get_config(), row).model)
    jax.eval_shape(get_spec(c.model.name).build(c.model).init, jax.random.PRNGKey(0),
                   jnp.zeros((1, 32, 32, 3)))


def test_per_iteration_masks_are_scored_on_request():
    from jirl.configs import unet as unet_config

    from jirl import metrics
    from jirl.training.steps import make_eval_step

    m, v = _model()
    cfg = rsrnet_config.get_config("quick")
    cfg.eval.per_iteration = True
    target = (jax.random.uniform(jax.random.PRNGKey(8), (2, 32, 32, 1)) > 0.6).astype(jnp.float32)
    per_image, masks = jax.jit(make_eval_step(get_spec("rsrnet"), cfg, m.apply))(
        v, {"image": _image(), "mask": target})
    assert set(masks) == {"M_fnl", "M_rsr", "M_dec", "M^1", "M^2", "M^3"}
    out = m.apply(v, _image())
    for k in range(3):
        chex.assert_trees_all_close(masks[f"M^{k + 1}"], out["rsr_masks"][k], atol=1e-6)
        reference = metrics.per_image_metrics(out["rsr_masks"][k], target, normalize=True)
        chex.assert_trees_all_close(per_image[f"M^{k + 1}"], reference, atol=1e-5)
    assert float(jnp.abs(masks["M^1"] - masks["M^3"]).max()) > 1e-4
    cfg.eval.per_iteration = False
    assert set(make_eval_step(get_spec("rsrnet"), cfg, m.apply)(v, {"image": _image(), "mask": target})[1]) \
        == {"M_fnl", "M_rsr", "M_dec"}
    unet_cfg = unet_config.get_config("quick")
    unet_cfg.eval.per_iteration = True
    with pytest.raises(ValueError, match="unet has no per-iteration masks"):
        make_eval_step(get_spec("unet"), unet_cfg, m.apply)


def test_paper_recipe_warns_without_imagenet_weights_or_iharmony4():
    from jirl.configs import unet as unet_config

    from jirl.training.recipe import recipe_warnings

    full = rsrnet_config.get_config()
    problems = recipe_warnings(full)
    assert len(problems) == 2
    assert "paper rsrnet recipe" in problems[0] and "--config.model.backbone_weights=" in problems[0]
    assert "--config.data.source=ihd" in problems[1]
    full.model.backbone_weights = "/weights/resnet34.pth"
    assert recipe_warnings(full) == [problems[1]]
    full.data.source = "ihd"
    assert recipe_warnings(full) == []
    assert len(recipe_warnings(unet_config.get_config())) == 2  # the official UNet recipe too
    for quick in (rsrnet_config.get_config("quick"), dirl_config.get_config("quick")):
        assert recipe_warnings(quick) == []


@pytest.mark.parametrize("backend,auto", [("cpu", 12), ("gpu", 1), ("tpu", 1)])
def test_unroll_zero_means_full_unroll_on_cpu_else_a_rolled_loop(monkeypatch, backend, auto):
    # scan_unroll asks jax.default_backend() when it is called: pretend each backend in turn
    monkeypatch.setattr(rsrnet.jax, "default_backend", lambda: backend)
    assert rsrnet.scan_unroll(0, 12) == auto
    assert rsrnet.scan_unroll(3, 12) == 3
    quick = rsrnet_config.get_config("quick").model
    assert (quick.unroll, quick.iterations) == (0, 12)
    assert rsrnet.build(quick).unroll == auto

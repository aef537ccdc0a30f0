"""config.dtype="bfloat16": one train step against float32 on the same weights and batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import dirl as dirl_config
from jirl.models import build_model, init_model_variables
from jirl.training.optim import make_optimizer
from jirl.training.state import create_train_state
from jirl.training.steps import make_train_step


def _config(dtype):
    c = dirl_config.get_config("quick")
    c.model.stem_features = 4
    c.model.stage_features = (4, 4, 8, 8, 8)
    c.model.stage_blocks = (1, 1, 1, 1, 1)
    c.model.ggd_ch = 4
    c.data.crop_size = 32
    c.dtype = dtype
    return c


def _batch(n=4, size=32):
    """Smooth normalized composites with an elliptic region of shifted colour, and its mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size] / size
    image = np.stack([np.sin(3 * xx + k) * np.cos(2 * yy - k) for k in range(3)], -1)
    images, masks = [], []
    for i in range(n):
        cy, cx, r = 0.3 + 0.1 * i, 0.6 - 0.1 * i, 0.2 + 0.03 * i
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.float32)[..., None]
        im = image + 0.1 * rng.standard_normal(image.shape) + m * np.array([0.8, -0.5, 0.3])
        images.append(im)
        masks.append(m)
    image = jnp.asarray(np.stack(images), jnp.float32)
    return {"image": image, "real": image, "mask": jnp.asarray(np.stack(masks), jnp.float32)}


@pytest.fixture(scope="module")
def steps():
    """The state after one step in float32 and in bfloat16, from the same variables, batch, tx."""
    batch = _batch()
    out = {}
    variables = None
    for dtype in ("float32", "bfloat16"):
        config = _config(dtype)
        spec, model = build_model(config)
        if variables is None:
            variables = init_model_variables(config, model)
        state = create_train_state(model, make_optimizer(config.optimizer, 100), variables)
        new_state, logs = jax.jit(make_train_step(spec, config))(state, batch)
        outputs = jax.jit(lambda v, x, m=model: m.apply(v, x, train=False))(
            new_state.variables(), batch["image"])
        out[dtype] = (state, new_state, jax.device_get(logs), outputs)
    return out


def test_bf16_loss_is_close_to_fp32(steps):
    f32, b16 = steps["float32"][2], steps["bfloat16"][2]
    assert bool(f32["finite"]) and bool(b16["finite"])
    loss32, loss16 = float(f32["loss"]), float(b16["loss"])
    # bf16 keeps 8 mantissa bits (rounding 2^-9 = 0.2 % per op); activations pass ~25 convs in
    # bf16 while BN statistics, sigmoids' logits up-cast and the six loss terms stay float32.
    # Measured |diff|/loss here is ~1e-3; 2e-2 leaves 10x+ headroom, while a wrong-dtype bug
    # (e.g. BN variance in bf16 of un-centred activations, or bf16 loss sums) moves it by far more.
    print(f"fp32 loss {loss32:.6f}, bf16 loss {loss16:.6f}, rel {abs(loss16 - loss32) / loss32:.2e}")
    assert abs(loss16 - loss32) / loss32 < 2e-2, (loss32, loss16)


def test_bf16_keeps_params_and_bn_statistics_float32(steps):
    state, new_state, _, outputs = steps["bfloat16"]
    for tree in (new_state.params, new_state.batch_stats, new_state.opt_state):
        for leaf in jax.tree.leaves(tree):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert leaf.dtype == jnp.float32, leaf.dtype
    assert jax.tree.structure(state.params) == jax.tree.structure(new_state.params)
    # the step updated the BN running statistics (train mode) and the params
    def changed(s):
        return jax.tree.map(lambda a, b: bool(jnp.any(a != b)), s[0].batch_stats, s[1].batch_stats)

    # (a BN whose module the forward pass does not reach, as in the official decoder, keeps its
    # statistics in both dtypes)
    assert changed(steps["bfloat16"]) == changed(steps["float32"])
    assert sum(jax.tree.leaves(changed(steps["bfloat16"]))) > 10
    assert any(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params,
                                            new_state.params)))
    for leaf in jax.tree.leaves(outputs):
        assert bool(jnp.all(jnp.isfinite(leaf.astype(jnp.float32))))
    assert jnp.dtype(outputs["mask"].dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32))


def test_bf16_and_fp32_updates_agree(steps):
    """After one Adam step the updated params differ by far less than the step itself."""
    s0, s32 = steps["float32"][0], steps["float32"][1]
    s16 = steps["bfloat16"][1]
    step32 = jax.tree.leaves(jax.tree.map(lambda a, b: a - b, s32.params, s0.params))
    step16 = jax.tree.leaves(jax.tree.map(lambda a, b: a - b, s16.params, s0.params))
    num = sum(float(jnp.sum((a - b) ** 2)) for a, b in zip(step32, step16, strict=True))
    den = sum(float(jnp.sum(a ** 2)) for a in step32)
    # Adam's first step is lr * g / (|g| + eps): sign-like, so tiny-gradient entries may flip;
    # agreement of the update direction overall is what matters
    print(f"relative update difference {num / den:.3e}")
    assert num / den < 0.5, num / den

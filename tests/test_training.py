"""Optimizer semantics, the train step, and checkpoints (no dataset needed)."""

import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jirl.configs import dirl as dirl_config

from jirl.models import get_spec
from jirl.runtime import checkpoints as ckpt
from jirl.training.optim import lr_schedule, make_optimizer
from jirl.training.state import create_train_state
from jirl.training.steps import make_train_step


def tiny_config() -> ml_collections.ConfigDict:
    c = dirl_config.get_config()
    c.model.stem_features = 4
    c.model.stage_features = (4, 4, 8, 8, 8)
    c.model.stage_blocks = (1, 1, 1, 1, 1)
    c.model.ggd_ch = 4
    c.data.crop_size = 32
    return c


def test_adam_with_l2_matches_torch_formula():
    """torch.optim.Adam(weight_decay=wd): g <- g + wd * p, then bias-corrected Adam."""
    cfg = ml_collections.ConfigDict(dict(learning_rate=1e-2, b1=0.9, b2=0.999, eps=1e-8,
                                         weight_decay=0.1, decay_epochs=(), decay_factor=0.5))
    tx = make_optimizer(cfg, steps_per_epoch=10)
    p = np.array([1.0, -2.0, 3.0])
    params = jnp.asarray(p)
    opt_state = tx.init(params)
    m = v = np.zeros(3)
    rng = np.random.default_rng(0)
    for t in range(1, 4):
        g = rng.normal(size=3)
        updates, opt_state = tx.update(jnp.asarray(g), opt_state, params)
        params = optax.apply_updates(params, updates)
        g = g + 0.1 * p
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        p = p - 1e-2 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        np.testing.assert_allclose(np.asarray(params), p, rtol=1e-5)


def test_multistep_schedule_halves_at_epoch_boundaries():
    cfg = ml_collections.ConfigDict(dict(learning_rate=1e-4, decay_epochs=(30, 40, 50, 55),
                                         decay_factor=0.5))
    sched = lr_schedule(cfg, steps_per_epoch=100)
    assert float(sched(0)) == pytest.approx(1e-4)
    assert float(sched(2999)) == pytest.approx(1e-4)
    assert float(sched(3000)) == pytest.approx(5e-5)
    assert float(sched(4000)) == pytest.approx(2.5e-5)
    assert float(sched(5600)) == pytest.approx(1e-4 / 16)


def _state_and_batch(config, batch_size=2):
    spec = get_spec("dirl")
    model = spec.build(config.model)
    size = config.data.crop_size
    variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0),
                                           jnp.zeros((1, size, size, 3)), train=False))()
    state = create_train_state(model, make_optimizer(config.optimizer, 10), variables)
    rng = np.random.default_rng(0)
    mask = np.zeros((batch_size, size, size, 1), np.float32)
    mask[:, 8:20, 6:18] = 1
    batch = {"image": rng.normal(size=(batch_size, size, size, 3)).astype(np.float32),
             "mask": mask}
    return spec, state, batch


def test_train_step_updates_params_and_bn_statistics():
    config = tiny_config()
    spec, state, batch = _state_and_batch(config)
    step = jax.jit(make_train_step(spec, config))
    new, logs = step(state, batch)
    assert int(new.step) == 1 and bool(logs["finite"])
    for k in ("loss", "detection", "attention", "bce", "ssim", "iou", "grad_norm"):
        assert np.isfinite(float(logs[k])), k
    changed = jax.tree_util.tree_flatten_with_path(
        jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new.params, state.params))[0]
    unchanged = [jax.tree_util.keystr(k) for k, c in changed if not c]
    # only the official, never-called GGD conv4's zero BN bias sees no update (zero grad, zero L2)
    assert unchanged == ["['decoder']['ggd']['d0']['conv4']['bn']['bias']"], unchanged
    stats_changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new.batch_stats,
                                 state.batch_stats)
    assert sum(jax.tree.leaves(stats_changed)) >= len(jax.tree.leaves(stats_changed)) - 2


def test_non_finite_loss_leaves_the_state_unchanged():
    config = tiny_config()
    spec, state, batch = _state_and_batch(config)
    batch["image"][0, 0, 0, 0] = np.nan
    new, logs = jax.jit(make_train_step(spec, config))(state, batch)
    assert not bool(logs["finite"])
    chex.assert_trees_all_equal(new.params, state.params)
    chex.assert_trees_all_equal(new.batch_stats, state.batch_stats)
    assert int(new.step) == 0


def test_checkpoint_round_trip(tmp_path):
    config = tiny_config()
    spec, state, batch = _state_and_batch(config)
    state, _ = jax.jit(make_train_step(spec, config))(state, batch)
    c = ckpt.Checkpointer(str(tmp_path))
    model_items = {"params": state.params, "batch_stats": state.batch_stats}
    train_items = {"step": state.step, "opt_state": state.opt_state}
    c.save_latest(1, model_items, train_items, {"step": 1, "best_iou": 0.25})
    c.close()
    fresh = jax.tree.map(jnp.zeros_like, (model_items, train_items))
    c2 = ckpt.Checkpointer(str(tmp_path))
    model_r, train_r, meta = c2.restore_latest(*fresh)
    c2.close()
    chex.assert_trees_all_equal(model_r, model_items)
    chex.assert_trees_all_equal(train_r, train_items)
    assert meta["best_iou"] == 0.25
    # inference restore of the same directory, by workdir and by step directory
    for path in (str(tmp_path), os.path.join(str(tmp_path), "checkpoints", "1")):
        chex.assert_trees_all_equal(ckpt.restore_model(path, fresh[0]), model_items)


def test_restore_into_a_different_model_names_the_mismatches(tmp_path):
    config = tiny_config()
    _, state, _ = _state_and_batch(config)
    ckpt.write_model_checkpoint(str(tmp_path / "ck"), {"params": state.params,
                                                       "batch_stats": state.batch_stats}, {})
    config.model.ggd_ch = 8
    _, other, _ = _state_and_batch(config)
    with pytest.raises(ckpt.CheckpointError, match="shape mismatch: .*ggd"):
        ckpt.restore_model(str(tmp_path / "ck"),
                           {"params": other.params, "batch_stats": other.batch_stats})


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.resolve_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint found"):
        ckpt.resolve_checkpoint(str(tmp_path))


def test_evaluate_checkpoint_refuses_what_it_cannot_write(tmp_path):
    """Outputs need a folder; a contact sheet shows masks, which a harmonizer has none of; both
    refused before any checkpoint is read."""
    from jirl_testing import tiny_rainnet_config

    from jirl.training.evaluate import evaluate_checkpoint

    with pytest.raises(ValueError, match="write into output_dir"):
        evaluate_checkpoint(tiny_config(), str(tmp_path / "none"), save_outputs=True)
    with pytest.raises(ValueError, match="rainnet is a harmonization model .save its images"):
        evaluate_checkpoint(tiny_rainnet_config(), str(tmp_path / "none"), contact_sheet=2,
                            output_dir=str(tmp_path))
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        evaluate_checkpoint(tiny_config(), str(tmp_path / "none"))

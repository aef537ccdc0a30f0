"""RainNet: RAIN against a float64 numpy reference, the generator and discriminator against the
official junleen/RainNet (fixtures/rainnet.npz), the adversarial train step against one official
float64 `optimize_parameters` (fixtures/rainnet_step.npz); see fixtures/README.md."""

from __future__ import annotations

import json
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from test_unet import synthetic_tensor

from jirl.convert import rainnet as conv
from jirl.models import rainnet as rn

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def sn_buffer(key: str, shape) -> np.ndarray:
    """A spectral-norm buffer (weight_u / weight_v) regenerated from its key: unit norm."""
    v = synthetic_tensor(key, shape).astype(np.float64)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _rect_mask(batch: int, size: int) -> np.ndarray:
    mask = np.zeros((batch, size, size, 1), np.float32)
    for b in range(batch):
        y0, x0 = (size * (3 + 2 * b)) // 16, (size * (2 + 3 * b)) // 16
        mask[b, y0:y0 + size // 2, x0:x0 + size * 3 // 8] = 1
    return mask


def forward_inputs(batch: int = 1, seed: str = "g", size: int = 256):
    """(image in [-1, 1], mask) of the forward-parity fixtures, regenerated from their keys."""
    n = batch * size * size * 3
    image = (synthetic_tensor(f"input/{seed}", (n,)) * np.float32(5)).reshape(batch, size, size, 3)
    return image, _rect_mask(batch, size)


def step_batch(batch: int = 2, size: int = 256) -> dict:
    """The float64 step's batch: a real image and a composite whose foreground is re-coloured."""
    real, mask = forward_inputs(batch, "step", size)
    image = np.clip(real * np.float32(0.8) + mask * np.array([0.3, -0.2, 0.1], np.float32), -1, 1)
    return {"image": image.astype(np.float32), "real": real, "mask": mask}


def synthetic_state_dict(shapes: dict, prefix: str = "") -> dict:
    """The fixture script's official state_dict: every tensor regenerated from its key."""
    return {k: (sn_buffer if k.endswith(("weight_u", "weight_v")) else synthetic_tensor)(
        prefix + k, tuple(s)) for k, s in shapes.items()}


# ---------------------------------------------------------------- RAIN


def rain_reference(x, mask, fg_gamma, fg_beta, bg_gamma, bg_beta, eps=1e-5):
    """RAIN in float64 numpy, written from `normalize.py` (NHWC; mask already feature-sized)."""
    x, m = x.astype(np.float64), mask.astype(np.float64)
    fg_gamma, fg_beta, bg_gamma, bg_beta = (np.float64(a) for a in (fg_gamma, fg_beta, bg_gamma,
                                                                     bg_beta))

    def stats(region, mm):
        num = mm.sum(axis=(1, 2), keepdims=True)
        mu = region.sum(axis=(1, 2), keepdims=True) / (num + eps)
        var = ((region + (1 - mm) * mu - mu) ** 2).sum(axis=(1, 2), keepdims=True) / (num + eps)
        return mu, np.sqrt(var + eps)

    mb, sb = stats(x * (1 - m), 1 - m)
    mf, sf = stats(x * m, m)
    bg = ((x - mb) / sb * (1 + bg_gamma) + bg_beta) * (1 - m)
    fg = (((x - mf) / sf * sb + mb) * (1 + fg_gamma) + fg_beta) * m
    return fg + bg


def _rain_params(c: int) -> dict:
    names = ("foreground_gamma", "foreground_beta", "background_gamma", "background_beta")
    return {n: synthetic_tensor(f"rain.{n}", (c,)) for n in names}


@pytest.mark.parametrize("region", ["mixed", "all_foreground", "all_background"])
def test_rain_matches_a_float64_numpy_reference(region):
    rng = np.random.RandomState(1)
    x = rng.randn(2, 6, 8, 4) * 1.5 + 0.3
    mask = np.zeros((2, 12, 16, 1))
    mask[0, 2:8, 4:12] = 1
    mask[1, 6:, :9] = 1
    if region != "mixed":
        mask[:] = 1.0 if region == "all_foreground" else 0.0
    p = _rain_params(4)
    with jax.enable_x64(True):
        y = rn.RAIN().apply({"params": jax.tree.map(jnp.float64, p)}, jnp.asarray(x),
                            jnp.asarray(mask))
        small = mask[:, ::2, ::2]  # nearest to 6 x 8: every second row and column
        ref = rain_reference(x, small, p["foreground_gamma"], p["foreground_beta"],
                             p["background_gamma"], p["background_beta"])
        chex.assert_shape(y, x.shape)
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-12, atol=1e-12)
        assert np.all(np.isfinite(np.asarray(y)))


def test_rain_matches_the_official_layer_with_gradients():
    fx = np.load(os.path.join(FIXTURES, "rainnet.npz"))
    p = _rain_params(fx["rain/in"].shape[-1])
    for tag, dtype, tol in (("f32", jnp.float32, 2e-5), ("f64", jnp.float64, 1e-12)):
        with jax.enable_x64(dtype == jnp.float64):
            params = {k: jnp.asarray(a, dtype) for k, a in p.items()}
            x = jnp.asarray(fx["rain/in"], dtype)
            mask = jnp.asarray(fx["rain/mask"], dtype)
            y, vjp = jax.vjp(lambda prm, xx, m=mask: rn.RAIN().apply({"params": prm}, xx, m),
                             params, x)
            ct = np.cos(np.arange(y.size)).reshape(y.shape[0], y.shape[3], *y.shape[1:3])
            dp, dx = vjp(jnp.asarray(ct.transpose(0, 2, 3, 1), dtype))
            np.testing.assert_allclose(np.asarray(y), fx[f"rain/{tag}/out"], atol=tol, rtol=tol)
            np.testing.assert_allclose(np.asarray(dx), fx[f"rain/{tag}/dx"], atol=tol, rtol=tol)
            np.testing.assert_allclose(np.asarray(dp["foreground_gamma"]),
                                       fx[f"rain/{tag}/dgamma_f"], atol=tol * 10, rtol=tol)
            np.testing.assert_allclose(np.asarray(dp["background_beta"]),
                                       fx[f"rain/{tag}/dbeta_b"], atol=tol * 10, rtol=tol)


# ---------------------------------------------------------------- official forward parity


def _official_config(**model) -> ml_collections.ConfigDict:
    from jirl.configs import rainnet as rc

    c = rc.get_config()
    c.model.update(model)
    return c


def _official_variables(config, index_key, *, discriminator=False):
    from jirl.models import build_model, init_model_variables

    fx = np.load(os.path.join(FIXTURES, "rainnet.npz"))
    index = json.loads(str(fx["index"]))
    _, model = build_model(config)
    shapes = jax.eval_shape(lambda: init_model_variables(config, model))
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    if discriminator:
        variables = conv.discriminator_variables(synthetic_state_dict(index["d"]), target)
    else:
        variables = conv.generator_variables(synthetic_state_dict(index[index_key]), target)
    return fx, model, variables


@pytest.mark.parametrize("norm", ["rain", "in"])
def test_generator_matches_the_official_at_256px(norm):
    fx, model, variables = _official_variables(_official_config(norm=norm), f"g/{norm}")
    image, mask = forward_inputs()
    out = jax.jit(lambda v, x, m: model.apply(v, x, train=False, mask=m))(
        variables, jnp.asarray(image), jnp.asarray(mask))
    o = np.asarray(out["output"], np.float64)
    chex.assert_shape(out["output"], image.shape)
    np.testing.assert_allclose(o[:, ::8, ::8], fx[f"g/{norm}/sub"], atol=1e-4)
    np.testing.assert_allclose(o.sum(axis=(0, 1, 2)), fx[f"g/{norm}/sum"], atol=2e-2)
    np.testing.assert_allclose((o ** 2).sum(axis=(0, 1, 2)), fx[f"g/{norm}/sumsq"], rtol=1e-5)
    m = mask.astype(bool)
    np.testing.assert_array_equal(np.asarray(out["harmonized"])[~m[..., 0]], image[~m[..., 0]])


def test_discriminator_heads_match_the_official_in_train_and_eval_mode():
    fx, model, variables = _official_variables(_official_config(), "d", discriminator=True)
    image, mask = forward_inputs(batch=2, seed="d")
    x, m = jnp.asarray(image), jnp.asarray(mask)

    def heads(v, train):
        (s, ver), upd = model.apply(v, x, m, train, method="discriminate",
                                    mutable=["batch_stats"])
        gp, upd2 = model.apply({**v, "batch_stats": upd["batch_stats"]}, x, m, train,
                               method="penalized_score", mutable=["batch_stats"])
        return s, ver, gp, upd2["batch_stats"]

    heads = jax.jit(heads, static_argnums=1)
    s, ver, gp, stats = heads(variables, True)
    for name, val in zip(("global", "verify", "gp"), (s, ver, gp), strict=True):
        np.testing.assert_allclose(np.asarray(val), fx[f"d/train/{name}"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(stats["d"]["conv1f"]["sn_u"]), fx["d/train/u_conv1f"],
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(stats["d"]["convl1"]["sn_v"]), fx["d/train/v_convl1"],
                               atol=1e-5)
    s, ver, gp, stats_eval = heads({**variables, "batch_stats": stats}, False)
    for name, val in zip(("global", "verify", "gp"), (s, ver, gp), strict=True):
        np.testing.assert_allclose(np.asarray(val), fx[f"d/eval/{name}"], atol=1e-4, rtol=1e-4)
    chex.assert_trees_all_equal(stats_eval, stats)  # eval mode leaves u and v alone


# ---------------------------------------------------------------- one float64 training step


def _step_variables(index: dict, target: dict, fill) -> dict:
    """jirl variables from the fixture's official G and D state_dicts, parameter i of the
    fixture's list given by `fill(i, key, shape)`; the spectral-norm buffers from their keys."""
    position = {k: i for i, k in enumerate(index["keys"])}

    def state_dict(part: str) -> dict:
        out = {}
        for k, shape in index[f"{part}_shapes"].items():
            key = f"{part}.{k}"
            out[k] = (sn_buffer(key, tuple(shape)) if k.endswith(("weight_u", "weight_v"))
                      else fill(position[key], key, tuple(shape)))
        return out

    variables = conv.generator_variables(state_dict("g"), target)
    return conv.discriminator_variables(state_dict("d"), variables)


def test_one_float64_training_step_matches_the_official():
    """One official `RainNetModel.optimize_parameters` in float64 (ngf = ndf = 8, 2 x 256 x 256,
    dropout 0; fixtures/README.md) against the train step: D's step (hinge terms, gradient
    penalty at the same per-sample alpha, Adam 2e-4 / (0.5, 0.999)) then G's (-D + 100 L1, Adam)
    on the same batch. Checks every loss term, every parameter's gradient in its phase (sum, sum
    of squares, 6 entries), every parameter's change, and the spectral-norm buffers after the
    four discriminator calls of the step."""
    from jirl.configs import rainnet as rc
    from test_madisnet import _to_official

    from jirl.models import resolve_spec
    from jirl.training import steps
    from jirl.training.optim import make_optimizer
    from jirl.training.state import create_train_state

    with np.load(os.path.join(FIXTURES, "rainnet_step.npz")) as f:
        fx = dict(f)
    index = json.loads(str(fx["index"]))
    n = len(index["keys"])
    c = rc.get_config()
    c.model.update(ngf=8, ndf=8, dropout=0.0)
    c.seed = index["seed"]
    batch_np = step_batch()
    with jax.enable_x64(True):
        spec = resolve_spec(c.model)
        model = spec.build(c.model, dtype=jnp.float64)
        shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 256, 256, 3))))
        target = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)
        variables = _step_variables(index, target, lambda i, k, s: synthetic_tensor(k, s))
        keys = _step_variables(index, target, lambda i, k, s: np.full(s, i, np.float32))["params"]
        flat_index = _step_variables(index, target, lambda i, k, s: np.arange(
            np.prod(s), dtype=np.float32).reshape(s))["params"]
        variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        state = create_train_state(model, make_optimizer(c.optimizer, 10, spec), variables)
        batch = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), batch_np)
        rng = jax.random.fold_in(jax.random.PRNGKey(c.seed), 0)
        np.testing.assert_array_equal(
            np.asarray(rn.gp_alpha(jax.random.fold_in(rng, 1), 2, jnp.float64)), fx["alpha"])
        run = jax.jit(steps.make_phase_runner(spec, c))
        after, logs, (grad_d, grad_g), _ = run(state, batch)
        # each network's gradient comes from its own phase
        grads = {"g": grad_g["g"], "d": grad_d["d"]}
        delta = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), after.params, state.params)
    np.testing.assert_allclose([float(logs[k]) for k in index["losses"]], fx["losses"],
                               rtol=1e-10, atol=1e-12, err_msg=str(index["losses"]))
    grads = _to_official({"d": grads["d"], "g": grads["g"]}, keys, flat_index, n)
    deltas = _to_official(delta, keys, flat_index, n)
    stats, samples = fx["grad_stats"], fx["grad_samples"]
    worst = {}
    for i, key in enumerate(index["keys"]):
        part = key.split(".")[0]
        scale = np.sqrt(np.nansum(stats[[k.startswith(part) for k in index["keys"]], 1]))
        sample = fx["sample_index"][i]
        sample = sample[sample >= 0]
        g, d = grads[i], deltas[i]
        err = {"grad": max(np.abs(g[sample] - samples[i, :len(sample)]).max(),
                           abs(g.sum() - stats[i, 0]) / np.sqrt(g.size)) / scale,
               "grad_sumsq": abs((g * g).sum() - stats[i, 1]) / scale**2}
        # Adam's first step is lr g / (|g| + 1e-8): for a gradient that is zero up to rounding
        # (a conv bias before an instance norm) the change is rounding noise, on both sides.
        meaningful = np.abs(samples[i, :len(sample)]) > 1e-12
        err["delta"] = np.abs(d[sample] - fx["delta_samples"][i, :len(sample)])[meaningful].max(
            initial=0.0)
        if stats[i, 1] > 1e-20:
            err["delta_max"] = abs(np.abs(d).max() - fx["delta_stats"][i, 1])
        for k, v in err.items():
            worst.setdefault(k, []).append((float(v), key))
    worst = {k: sorted(v, reverse=True)[:4] for k, v in worst.items()}
    limits = {"grad": 1e-10, "grad_sumsq": 1e-10, "delta": 1e-12, "delta_max": 1e-12}
    assert all(worst[k][0][0] <= v for k, v in limits.items()), worst
    assert max(worst["delta"][0][0], worst["delta_max"][0][0]) > 0  # the changes were compared
    buffers = {k: np.asarray(v) for k, v in _flat_buffers(after.batch_stats["d"]).items()}
    for j, key in enumerate(index["buffers"]):  # e.g. "D.conv1f.weight_u" -> conv1f/sn_u
        module, leaf = key.removeprefix("D.").rsplit(".", 1)
        value = buffers[f"{module}/sn_{leaf[-1]}"]
        np.testing.assert_allclose(value.sum(), fx["buffer_sums"][j], atol=1e-10, err_msg=key)
        np.testing.assert_allclose(value[:4], fx["buffer_first"][j], atol=1e-10, err_msg=key)


def _flat_buffers(tree: dict) -> dict:
    return {f"{m}/{k}": v for m, leaves in tree.items() for k, v in leaves.items()}


# ---------------------------------------------------------------- the two-phase train step


def _tiny_config() -> ml_collections.ConfigDict:
    from jirl.configs import rainnet as rc

    c = rc.get_config("quick")
    c.model.update(ngf=4, blocks=1, ndf=4, d_strided=2)
    c.data.crop_size = 32
    return c


def _adam_counts(opt_state) -> dict:
    """{group: the Adam step count of its optimizer}."""
    return {label: int(next(leaf for path, leaf in jax.tree_util.tree_leaves_with_path(inner)
                            if "count" in jax.tree_util.keystr(path)))
            for label, inner in opt_state.inner_states.items()}


def _tiny_step() -> tuple:
    """(config, spec, model, train state, batch) of a tiny RainNet's train step on 2 x 32 px."""
    from jirl.models import build_model, init_model_variables
    from jirl.training.optim import make_optimizer
    from jirl.training.state import create_train_state

    c = _tiny_config()
    spec, model = build_model(c)
    state = create_train_state(model, make_optimizer(c.optimizer, 10, spec),
                               init_model_variables(c, model))
    image, mask = forward_inputs(2, "tiny", 32)
    batch = {"image": jnp.asarray(image), "real": jnp.asarray(image * 0.9), "mask": jnp.asarray(mask)}
    return c, spec, model, state, batch


def test_the_train_step_updates_each_network_once_with_its_own_adam_and_rolls_back_nan():
    """One jitted step: D's and G's parameters both move, each Adam counts one step (the D phase
    does not step G's Adam with zero gradients, nor the reverse), the spectral-norm buffers move,
    the step counter advances once; a NaN batch leaves the whole state as it was."""
    from jirl.training import steps

    c, spec, model, state, batch = _tiny_step()
    step = jax.jit(steps.make_train_step(spec, c))
    new, logs = step(state, batch)
    assert bool(logs["finite"]) and int(new.step) == 1
    assert _adam_counts(new.opt_state) == {"g": 1, "d": 1}
    for part in ("g", "d"):
        moved = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                                             new.params[part], state.params[part]))
        # (biases that feed an instance norm have zero gradient and may stay where they are)
        assert sum(moved) > len(moved) // 2, part
    assert not np.allclose(new.batch_stats["d"]["conv1f"]["sn_u"],
                           state.batch_stats["d"]["conv1f"]["sn_u"])
    for key in ("loss_D", "D_gp", "loss_G", "G_L1", "grad_norm_d", "grad_norm_g"):
        assert np.isfinite(float(logs[key])), key
    bad, bad_logs = step(new, dict(batch, real=batch["real"].at[0, 0, 0, 0].set(jnp.nan)))
    assert not bool(bad_logs["finite"])
    chex.assert_trees_all_equal(bad, new)


def test_a_step_runs_the_generator_once_and_differentiates_each_network_in_its_own_phase():
    """The step's G forward is shared (official `optimize_parameters` runs `forward()` once):
    tracing one step calls G once and D four times (fake, real, interpolation, then G's step);
    the D phase's gradient holds nothing for G and the G phase's nothing for D (each phase is
    differentiated only with respect to its own network); a spec whose phases would update the
    same group after a shared forward, or differentiate through a forward it lacks, is refused."""
    import dataclasses

    from jirl.training import steps

    c, spec, model, state, batch = _tiny_step()
    calls = []

    def apply(*args, method=None, **kwargs):
        calls.append(method or "generator")
        return model.apply(*args, method=method, **kwargs)

    run = steps.make_phase_runner(spec, c)
    _, _, (grad_d, grad_g), _ = run(state.replace(apply_fn=apply), batch)
    assert calls == ["generator", "discriminate", "discriminate", "penalized_score",
                     "discriminate"], calls
    for grads, other in ((grad_d, "g"), (grad_g, "d")):
        assert not any(np.any(np.asarray(x)) for x in jax.tree.leaves(grads[other])), other
    assert all(np.any(np.asarray(x)) for x in jax.tree.leaves(grad_d["d"])[:4])
    assert any(np.any(np.asarray(x)) for x in jax.tree.leaves(grad_g["g"]))
    phases = spec.train_phases
    same = dataclasses.replace(spec, train_phases=(phases[0], dataclasses.replace(
        phases[1], groups=("g", "d"))))
    with pytest.raises(ValueError, match=r"phase 'g' updates groups \['d'\] that an earlier"):
        steps.make_phase_runner(same, c)
    with pytest.raises(ValueError, match="differentiates through the shared forward"):
        steps.make_phase_runner(dataclasses.replace(spec, train_forward=None), c)


def test_the_eval_step_scores_the_recomposited_harmonization_like_the_official_evaluation():
    """The eval step feeds G the official test composite comp * M + real * (1 - M), so the
    harmonized background is the real one and all error lies in the foreground; its MSE / PSNR /
    fMSE equal evaluate.py's tensor2im + skimage on the image it returns, and the do-nothing
    baseline scores that composite; a padded row scores zeros."""
    from test_metrics import official_harmonization_scores

    from jirl.models import build_model, init_model_variables
    from jirl.tasks import COMPOSITE_BASELINE
    from jirl.training import steps

    c = _tiny_config()
    spec, model = build_model(c)
    variables = init_model_variables(c, model)
    image, mask = forward_inputs(2, "tiny", 32)
    real = np.clip(image * 0.8 + 0.1, -1, 1).astype(np.float32)
    batch = {"image": jnp.asarray(image), "real": jnp.asarray(real), "mask": jnp.asarray(mask),
             "valid": jnp.asarray([True, False])}
    per_image, images = jax.jit(steps.make_eval_step(spec, c, model.apply))(variables, batch)
    assert set(per_image) == {"harmonized", COMPOSITE_BASELINE} and set(images) == {"harmonized"}
    out = np.asarray(images["harmonized"])
    np.testing.assert_array_equal(out[0][mask[0, ..., 0] == 0], (real[0] * 0.5 + 0.5)[mask[0, ..., 0] == 0])
    comp = image * mask + real * (1 - mask)
    for name, picture in (("harmonized", out[0] * 2 - 1), (COMPOSITE_BASELINE, comp[0])):
        want = official_harmonization_scores(picture, real[0], mask[0])
        for k, v in want.items():
            np.testing.assert_allclose(per_image[name][k][0], v, rtol=1e-5, err_msg=(name, k))
        assert all(float(v[1]) == 0.0 for v in per_image[name].values())
    scores = per_image["harmonized"]
    np.testing.assert_allclose(scores["mse"][0], scores["fmse"][0] * scores["fg_ratio"][0], rtol=1e-5)




def test_convert_cli_writes_a_checkpoint_that_eval_and_init_from_restore(tmp_path):
    """`python -m jirl.convert rainnet --checkpoint net_G.pth [--discriminator net_D.pth]`'s
    conversion (torch.save files of the official keys) restores as eval.py / init_from restore
    it, holding what the parity-tested importers give; a D file in the G slot is refused."""
    torch = pytest.importorskip("torch", reason="the optional extra jirl[torch] is not installed")
    from jirl.convert.official import convert as convert_cli
    from jirl.models import build_model, init_model_variables
    from jirl.runtime import checkpoints as ckpt
    from jirl.runtime.torch_io import ConversionError

    index = json.loads(str(np.load(os.path.join(FIXTURES, "rainnet.npz"))["index"]))
    files = {}
    for part, name in (("g/rain", "net_G_last.pth"), ("d", "net_D_last.pth")):
        sd = synthetic_state_dict(index[part])
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()},
                   tmp_path / name)
        files[part] = (str(tmp_path / name), sd)
    c = _official_config()
    out = convert_cli("rainnet", {"checkpoint": files["g/rain"][0],
                                  "discriminator": files["d"][0]}, str(tmp_path / "ckpt"), c)
    _, model = build_model(c)
    shapes = jax.eval_shape(lambda: init_model_variables(c, model))
    restored = ckpt.restore_model(out, shapes, model_cfg=c.model)
    want = conv.discriminator_variables(files["d"][1], conv.generator_variables(
        files["g/rain"][1], jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)))
    chex.assert_trees_all_equal(jax.device_get(restored), want)
    with pytest.raises(ConversionError, match="does not look like an official RainNet generator"):
        convert_cli("rainnet", {"checkpoint": files["d"][0]}, str(tmp_path / "bad"), c)


# ---------------------------------------------------------------- train.py and eval.py

TINY_FLAGS = [
    "--config", "configs/rainnet.py:quick", "--config.model.ngf=4", "--config.model.blocks=1",
    "--config.model.ndf=4", "--config.model.d_strided=2", "--config.data.image_size=32",
    "--config.data.crop_size=32", "--config.data.num_train=40", "--config.data.num_test=8",
    "--config.batch_size=4", "--config.eval.batch_size=4", "--config.log_every_steps=1",
    "--config.checkpoint_every_steps=2", "--config.eval_every_steps=2",
]


def _records(workdir) -> dict[int, dict]:
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r for r in records if "loss_D" in r}


def test_train_py_runs_the_adversarial_steps_resumes_exactly_on_two_devices_and_eval_py_scores_it(
        tmp_path):
    """train.py rainnet on 2 devices: 4 steps straight, and 2 steps then a resumed run to 4,
    log the same D and G losses bit for bit (both networks, both Adams and the spectral-norm
    buffers are checkpointed); validation (the quick variants score the test split) logs PSNR,
    writes harmonized images to TensorBoard and keeps the best checkpoint by PSNR; eval.py
    writes MSE / PSNR / fMSE per subset and foreground-ratio bin to eval.json, and the
    harmonized PNGs."""
    from jirl_testing import run, subprocess_env

    from jirl.runtime import checkpoints as ckpt

    env = subprocess_env(2, cache_dir=tmp_path / "xla_cache")
    common = [*TINY_FLAGS, f"--config.data.data_dir={tmp_path / 'data'}"]
    run(["train.py", *common, "--workdir", str(tmp_path / "a"), "--config.num_train_steps=4"], env)
    run(["train.py", *common, "--workdir", str(tmp_path / "b"), "--config.num_train_steps=2"], env)
    run(["train.py", *common, "--workdir", str(tmp_path / "b"), "--config.num_train_steps=4"], env)
    a, b = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in ("loss_D", "D_gp", "loss_G", "G_L1", "loss", "grad_norm_d", "grad_norm_g"):
            assert a[step][key] == b[step][key], (step, key)
    with open(tmp_path / "a" / "metrics.jsonl") as f:
        val = [json.loads(line) for line in f if "test/psnr" in line]  # quick: the test split
    assert [r["step"] for r in val] == [2, 4] and all(r["test/psnr"] > 5 for r in val)
    events = b"".join(p.read_bytes() for p in (tmp_path / "a" / "tensorboard").iterdir())
    assert b"test/harmonized" in events
    (best_dir,) = (tmp_path / "a" / "best").iterdir()
    best = ckpt.read_meta(str(best_dir))
    assert best["best_score"] == max(r["test/psnr"] for r in val) == best["val"]["psnr"]
    assert int(best_dir.name) == max(val, key=lambda r: r["test/psnr"])["step"]
    proc = run(["eval.py", *common, "--workdir", str(tmp_path / "eval"), "--checkpoint",
                str(tmp_path / "a" / "checkpoints" / "4"), "--save_outputs"], env)
    result = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert result["task"] == "harmonization" and result["quantized"] is True
    rows = result["results"]["harmonized"]
    assert rows["all"]["count"] == 8
    assert sum(rows[g]["count"] for g in rows if g.startswith("fg ")) == 8
    assert set(rows["all"]) == {"mse", "psnr", "fmse", "fg_ratio", "count"}
    assert "baseline/composite" in result["results"] and "PSNR" in proc.stdout
    assert len(list((tmp_path / "eval" / "images" / "harmonized").glob("*.png"))) == 8

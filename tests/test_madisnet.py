"""MadisNet: E_dom and the domain-discrepancy losses against the official code (fixture), the
frozen VGG layers, the three optimizer groups, the objective, the configs and the importer."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jirl_testing import tiny_madisnet_config
from test_unet import synthetic_tensor

from jirl import losses
from jirl.convert import madisnet as convert
from jirl.models import build_model, get_spec, init_model_variables, madisnet, resolve_spec
from jirl.models.layers import resize_bilinear
from jirl.runtime.torch_io import ConversionError
from jirl.training.optim import make_optimizer
from jirl.training.state import create_train_state
from jirl.training.steps import make_loss_fn, make_train_step

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# Official MadisNet forward pass vs jirl, float32 (measured max |diff|: I' 9.4e-6; masks 2.1e-4 in
# train mode at 256 px). That is float32 rounding: the official model itself moves its mask by
# 1.8e-4 between float32 and float64, and in float64 jirl and the official agree to 1.7e-12
# (tests/fixtures/README.md).
MASK_ATOL = 5e-4


def _batch(seed: int = 0, b: int = 2, size: int = 32) -> dict:
    rng = np.random.default_rng(seed)
    mask = np.zeros((b, size, size, 1), np.float32)
    mask[0, 4:20, 6:30] = 1
    mask[1:, 10:31, 12:28] = 1
    return {"image": jnp.asarray(rng.standard_normal((b, size, size, 3)), jnp.float32),
            "mask": jnp.asarray(mask)}


@pytest.fixture(scope="module")
def tiny_state():
    c = tiny_madisnet_config()
    spec, model = build_model(c)
    variables = init_model_variables(c, model)
    return c, spec, model, create_train_state(model, make_optimizer(c.optimizer, 10, spec), variables)


# ---------------------------------------------------------------- E_dom and the losses


def _edom_fixture():
    with np.load(os.path.join(FIXTURES, "edom.npz")) as f:
        fx = dict(f)
    return fx, json.loads(str(fx["index"]))


def test_domain_encoder_matches_the_official_codes():
    """Official `DomainEncoder(style_dim=16)` (tests/fixtures/README.md): the codes of foreground
    and background on a composite and on a mapped image."""
    fx, index = _edom_fixture()
    b, h, w = index["shape"]
    sd = {k: synthetic_tensor(k, tuple(s)) for k, s in index["synthetic"].items()}
    for k in index["state_dict"]:  # PartialConv2d's second name for its conv's bias
        if k.endswith(".conv.bias"):
            sd[k] = sd[k.replace(".conv.bias", ".bias")]
    enc = madisnet.DomainEncoder()
    shapes = jax.eval_shape(lambda: enc.init(jax.random.PRNGKey(0), jnp.zeros((1, h, w, 3)),
                                             jnp.ones((1, h, w, 1))))
    target = {"params": jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"]),
              "batch_stats": {}}
    variables = convert.domain_encoder_variables(sd, target)
    n = b * h * w * 3
    image = (synthetic_tensor("input/image", (n,)) * np.float32(10)).reshape(b, h, w, 3)
    mapped = (synthetic_tensor("input/mapped", (n,)) * np.float32(2.5) + np.float32(0.5)).reshape(b, h, w, 3)
    mask = fx["mask"].astype(np.float32)
    codes = jax.jit(lambda x, m: enc.apply({"params": variables["params"]}, x, m))(
        np.concatenate([image, image, mapped, mapped]), np.concatenate([mask, 1 - mask, mask, 1 - mask]))
    np.testing.assert_allclose(np.asarray(codes).reshape(4, b, -1), fx["codes"], rtol=1e-5, atol=2e-5)


def test_domain_discrepancy_losses_match_the_official_formulas():
    fx, _ = _edom_fixture()
    ddm, di = losses.domain_discrepancy_losses(*[jnp.asarray(c) for c in fx["codes"]], margin=1e-3)
    np.testing.assert_allclose([float(ddm), float(di)], fx["losses"], rtol=2e-6)


def test_losses_have_finite_gradients_when_a_discrepancy_vanishes():
    """torch.norm's backward is 0 at 0; a naive sqrt would give NaN (an empty region, say)."""
    z = jnp.ones((2, 4))
    grads = jax.grad(lambda a: sum(losses.domain_discrepancy_losses(a, a, z, 2 * z)))(z)
    chex.assert_tree_all_finite(grads)


# ---------------------------------------------------------------- frozen VGG and optimizer groups


def test_vgg_weights_fill_the_domain_encoders_partial_convs_only(tmp_path):
    """config.model.vgg_weights names a torchvision vgg16 .pth: features.{0,2,5,7,10,12,14}
    (conv1_1 ... conv3_3) land in E_dom's conv0 ... conv6 (written here by hand, independently
    of the model file's rules); the deeper convs and the classifier are ignored; nothing else
    changes."""
    torch = pytest.importorskip("torch", reason="the optional extra jirl[torch] is not installed")
    from jirl.runtime.pretrained import load_pretrained

    c = tiny_madisnet_config()
    spec, model = build_model(c)
    source = jax.device_get(init_model_variables(c, model, seed=1))
    fresh = jax.device_get(init_model_variables(c, model, seed=2))
    sd = {}
    for k, index in enumerate((0, 2, 5, 7, 10, 12, 14)):
        conv = source["params"]["domain_encoder"][f"conv{k}"]
        oihw = np.transpose(np.asarray(conv["kernel"]), (3, 2, 0, 1)).copy()
        sd[f"features.{index}.weight"] = torch.from_numpy(oihw)
        sd[f"features.{index}.bias"] = torch.from_numpy(np.asarray(conv["bias"]).copy())
    sd["features.17.weight"] = torch.zeros(8, 8, 3, 3)  # conv4_1: no counterpart
    sd["classifier.0.weight"] = torch.zeros(10, 8)
    torch.save(sd, tmp_path / "vgg16.pth")
    c.model.vgg_weights = str(tmp_path / "vgg16.pth")
    loaded = load_pretrained(spec.pretrained, fresh, c.model)
    for k in range(7):
        chex.assert_trees_all_equal(loaded["params"]["domain_encoder"][f"conv{k}"],
                                    source["params"]["domain_encoder"][f"conv{k}"])
    rest = lambda v: {k: x for k, x in v["params"].items() if k != "domain_encoder"}  # noqa: E731
    chex.assert_trees_all_equal(rest(loaded), rest(fresh))
    del sd["features.14.bias"]
    torch.save(sd, tmp_path / "broken.pth")
    c.model.vgg_weights = str(tmp_path / "broken.pth")
    with pytest.raises(ConversionError, match="missing .*domain_encoder/conv6/bias"):
        load_pretrained(spec.pretrained, fresh, c.model)


def test_vgg_layers_are_frozen_and_have_no_optimizer_state(tiny_state):
    c, spec, _, state = tiny_state
    labels = spec.param_labels(state.params)
    frozen = {k for k, v in labels["domain_encoder"].items() if set(jax.tree.leaves(v)) == {"frozen"}}
    assert frozen == {f"conv{i}" for i in range(7)}
    assert set(jax.tree.leaves(labels)) == {"g", "ihdrnet", "domain_encoder", "frozen"}
    # Adam keeps two moments per trainable scalar, and nothing for the frozen ones
    trainable = sum(x.size for x, lab in zip(jax.tree.leaves(state.params), jax.tree.leaves(labels),
                                             strict=True) if lab != "frozen")
    stored = sum(x.size for x in jax.tree.leaves(state.opt_state) if jnp.ndim(x) > 0)
    assert stored == 2 * trainable
    step = jax.jit(make_train_step(spec, c))
    new, logs = step(state, _batch())
    new, logs = step(new, _batch(1))
    assert bool(logs["finite"])
    for name, tree in state.params["domain_encoder"].items():
        same = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), tree,
                                            new.params["domain_encoder"][name]))
        assert all(same) == (name in frozen), name
    for part in ("g", "ihdrnet"):
        assert not jax.tree.all(jax.tree.map(jnp.array_equal, state.params[part], new.params[part]))


def test_each_optimizer_group_takes_its_own_settings(tiny_state):
    c, spec, _, state = tiny_state
    c = c.copy_and_resolve_references()
    c.optimizer.groups = ml_collections.ConfigDict({"ihdrnet": {"learning_rate": 0.0}})
    tx = make_optimizer(c.optimizer, 10, spec)
    grads = jax.tree.map(jnp.ones_like, state.params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(state.params), state.params)
    moved = {part: any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates[part]))
             for part in updates}
    assert moved == {"g": True, "ihdrnet": False, "domain_encoder": True}
    assert not any(bool(jnp.any(u != 0)) for name, tree in updates["domain_encoder"].items()
                   if name.startswith("conv") for u in jax.tree.leaves(tree))  # frozen VGG
    c.optimizer.groups = ml_collections.ConfigDict({"vgg": {"learning_rate": 0.0}})
    with pytest.raises(ValueError, match=r"groups names \['vgg'\].*\['domain_encoder', 'g', 'ihdrnet'\]"):
        make_optimizer(c.optimizer, 10, spec)
    c.optimizer.groups = ml_collections.ConfigDict({"g": {"lr": 0.0}})
    with pytest.raises(ValueError, match=r"groups.g has unknown keys \['lr'\]"):
        make_optimizer(c.optimizer, 10, spec)


def test_gradients_reach_every_trainable_parameter(tiny_state):
    c, spec, model, state = tiny_state
    params = jax.tree.map(jnp.asarray, state.params)
    params["ihdrnet"]["coeffs"]["sa"]["gamma"] = jnp.full((1,), 0.5)  # 0 at init hides attention

    def loss(p):
        out, _ = model.apply({"params": p, "batch_stats": state.batch_stats}, _batch()["image"],
                             train=True, mask=_batch()["mask"], mutable=["batch_stats"])
        return spec.objective(out, _batch(), c.loss)[0]

    grads = jax.jit(jax.grad(loss))(params)
    labels = spec.param_labels(params)
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    zero = {jax.tree_util.keystr(k) for k, g in flat if not np.any(np.asarray(g))}
    frozen = {jax.tree_util.keystr(k) for k, lab in jax.tree_util.tree_flatten_with_path(labels)[0]
              if lab == "frozen"}
    never_called = {k for k in zero if "['ggd']['d0']['conv4']" in k}  # DIRL's unused GGD conv4
    assert zero - never_called == frozen


# ---------------------------------------------------------------- objective, outputs, configs


def test_objective_adds_the_weighted_discrepancy_losses_to_the_localizers(tiny_state):
    c, spec, model, state = tiny_state
    batch = _batch()
    out = jax.jit(lambda v, x, m: model.apply(v, x, train=False, mask=m))(state.variables(),
                                                                        batch["image"], batch["mask"])
    total, logs = spec.objective(out, batch, c.loss)
    loc_total, _ = get_spec("dirl").objective(out, batch, c.loss)
    ddm, di = losses.domain_discrepancy_losses(*out["domain_codes"], margin=1e-3)
    np.testing.assert_allclose(total, loc_total + 1e-3 * ddm + 1e-3 * di, rtol=1e-6)
    assert {"ddm", "di", "localization", "bce", "iou", "attention", "total"} <= set(logs)
    assert "ssim" not in logs  # MadisNet's DIRL loss is bce + iou
    chex.assert_shape(out["retouched"], (2, 32, 32, 3))
    chex.assert_shape(out["domain_codes"], [(2, 4)] * 4)
    evaluated = model.apply(state.variables(), batch["image"])  # evaluation: no E_dom
    assert "domain_codes" not in evaluated and set(spec.eval_masks(evaluated)) == {"mask"}


def _shapes(model, spec, loss_cfg, train: bool):
    """Shapes of the variables, the outputs and the logs (traced, not compiled)."""
    batch = _batch()

    def run():
        v = model.init(jax.random.PRNGKey(0), batch["image"])
        if not train:
            return v, model.apply(v, batch["image"]), {}
        out, _ = model.apply(v, batch["image"], train=True, mask=batch["mask"], mutable=["batch_stats"])
        return v, out, spec.objective(out, batch, loss_cfg)[1]

    return jax.eval_shape(run)


def test_without_the_domain_encoder_there_is_no_discrepancy_loss():
    c = tiny_madisnet_config(domain_encoder=False)
    spec, model = build_model(c)
    v, out, logs = _shapes(model, spec, c.loss, train=True)
    assert set(v["params"]) == {"g", "ihdrnet"} and "domain_codes" not in out
    assert [p.key for p in spec.pretrained] == ["backbone_weights"]
    assert "ddm" not in logs and "localization" in logs


def test_any_registered_localizer_is_g():
    for localizer, masks in (("unet", {"mask"}), ("rsrnet", {"M_fnl", "M_dec", "M_rsr"})):
        c = tiny_madisnet_config(localizer)
        spec, model = build_model(c)
        assert spec.primary_mask == get_spec(localizer).primary_mask
        assert spec.step_masks is get_spec(localizer).step_masks
        _, out, logs = _shapes(model, spec, c.loss, train=True)
        assert set(spec.eval_masks(out)) == masks and {"ddm", "di"} <= set(logs)


def test_configs():
    from jirl.configs import madisnet as madisnet_config

    c = madisnet_config.get_config()
    assert (c.batch_size, c.data.crop_size, c.num_epochs, c.recipe) == (12, 256, 60, "official")
    assert tuple(c.optimizer.decay_epochs) == (30, 40, 50, 55) and c.optimizer.learning_rate == 1e-4
    assert c.model.localizer.name == "dirl" and c.model.localizer.attention_align_corners
    loss = (c.loss.mode, c.loss.lambda_ddm, c.loss.lambda_di, c.loss.ddm_margin)
    assert loss == ("bce_iou", 1e-3, 1e-3, 1e-3)
    spec = resolve_spec(c.model)
    assert [(p.key, p.kind, p.prefix) for p in spec.pretrained] == [
        ("backbone_weights", "resnet34", "g"), ("vgg_weights", "vgg16", "domain_encoder")]
    from jirl.configs import dirl as dirl_config

    quick, reference = madisnet_config.get_config("quick"), dirl_config.get_config("quick")
    for key in reference:  # quick trains like configs/dirl.py:quick (same data), 14 of its 20 epochs
        if key not in ("model", "loss", "optimizer", "num_epochs"):
            assert quick[key] == reference[key], key
    assert (quick.num_epochs, quick.optimizer.decay_epochs) == (14, (11, 13))
    from jirl.training.recipe import recipe_warnings

    problems = recipe_warnings(c)  # the official recipe needs iHarmony4 and both ImageNet files
    assert [p.split(" is unset")[0].split("config.model.")[-1] for p in problems[:2]] == [
        "backbone_weights", "vgg_weights"] and "config.data.source" in problems[2]
    assert recipe_warnings(quick) == []
    assert madisnet_config.get_config("quick,rsrnet").model.localizer.name == "rsrnet"
    assert not madisnet_config.get_config("noddm").model.domain_encoder
    with pytest.raises(ValueError, match="conflicting variants 'unet,rsrnet'"):
        madisnet_config.get_config("unet,rsrnet")
    bad = madisnet_config.get_config("quick")
    bad.model.luma_bins = 8
    with pytest.raises(ValueError, match=r"keys that MadisNet does not take: \['luma_bins'\]"):
        build_model(bad)


# ---------------------------------------------------------------- the importer


def test_domain_encoder_importer_checks_the_duplicate_bias_and_the_weights():
    fx, index = _edom_fixture()
    sd = {k: synthetic_tensor(k, tuple(s)) for k, s in index["synthetic"].items()}
    for k in index["state_dict"]:
        if k.endswith(".conv.bias"):
            sd[k] = sd[k.replace(".conv.bias", ".bias")]
    shapes = jax.eval_shape(lambda: madisnet.DomainEncoder().init(
        jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), jnp.ones((1, 16, 16, 1))))
    target = {"params": jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"]),
              "batch_stats": {}}
    out = convert.domain_encoder_variables(sd, target)
    np.testing.assert_array_equal(out["params"]["weight"], sd["weight"])
    np.testing.assert_array_equal(out["params"]["conv3"]["kernel"],
                                  sd["conv3.conv.weight"].transpose(2, 3, 1, 0))
    broken = dict(sd, **{"conv2.bias": sd["conv2.bias"] + 1})
    with pytest.raises(ConversionError, match="conv2.bias differs from conv2.conv.bias"):
        convert.domain_encoder_variables(broken, target)
    with pytest.raises(ConversionError, match="missing source key: weight"):
        convert.domain_encoder_variables({k: v for k, v in sd.items() if k != "weight"}, target)


def test_an_optimizer_without_groups_is_one_adam(tiny_state):
    c, _, _, state = tiny_state
    tx = make_optimizer(c.optimizer, 10)
    assert not isinstance(tx.init(state.params), optax.MultiTransformState)


# ---------------------------------------------------------------- official forward pass


def _official_state_dict(localizer: str, fx: dict, index: dict, stats: str = "stored") -> dict:
    """The fixture's MadisNet(localizer) weights (regenerated) and BN statistics (`stats`: the
    stored ones, or those after a train pass, `after_train/<size>`), keyed "g.*" / "ihdrnet.*"."""
    info = index[localizer]
    sd = {k: synthetic_tensor(k, tuple(s)) for k, s in info["synthetic"].items()}
    keys, sizes = zip(*info["stored"], strict=True)
    bounds = np.cumsum([0, *sizes])
    flat = fx[f"{localizer}/{stats}"]
    sd.update({k: flat[a:b].astype(np.float32)
               for k, a, b in zip(keys, bounds[:-1], bounds[1:], strict=True)})
    return sd


def _official_variables(localizer: str, fx: dict, index: dict, target: dict,
                        stats: str = "stored") -> dict:
    """`_official_state_dict`, imported into `target`'s tree."""
    sd = _official_state_dict(localizer, fx, index, stats)
    parts = {"g": {}, "ihdrnet": {}}
    for k, v in sd.items():
        part, _, rest = k.partition(".")
        parts[part][rest] = v
    return convert.madisnet_variables(parts["g"], parts["ihdrnet"], target, localizer)


@pytest.mark.parametrize("localizer", ["dirl", "unet"])
def test_matches_the_official_forward_pass(localizer):
    """Official MadisNet(DIRL) / MadisNet(UNet) at full width (tests/fixtures/README.md): the masks
    (DIRL: and the five attention maps) and I', eval and train mode, at 256 x 256 and 48 x 80; and
    libcom's MadisNet, which gives the same mask from the same files."""
    from jirl.configs import madisnet as madisnet_config

    with np.load(os.path.join(FIXTURES, "madisnet.npz")) as f:
        fx = dict(f)
    index = json.loads(str(fx["index"]))
    c = madisnet_config.get_config("" if localizer == "dirl" else localizer)
    c.model.domain_encoder = False  # not part of the forward pass
    _, model = build_model(c)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    variables = _official_variables(localizer, fx, index, target)

    def maps(out):
        if localizer == "unet" and out["logits"].shape[1] != out["logits"].shape[2]:
            # the official UNet resizes its logits to (W, H), swapping the sides of a non-square
            # image (jirl's does not, see jirl/models/unet.py); replayed here on jirl's logits
            h, w = out["logits"].shape[1:3]
            return jax.nn.sigmoid(resize_bilinear(out["logits"], (w, h), align_corners=True))[None]
        return jnp.stack([out["mask"], *out.get("attention", ())])

    @jax.jit
    def run(v, x):
        ev = model.apply(v, x, False)
        tr, upd = model.apply(v, x, True, mutable=["batch_stats"])
        return (maps(ev), ev["retouched"]), (maps(tr), tr["retouched"]), upd["batch_stats"]

    for h, w in index["sizes"]:
        tag, s = f"{h}x{w}", index["strides"][f"{h}x{w}"]
        x = (synthetic_tensor(f"input/{tag}", (2 * h * w * 3,)) * np.float32(10)).reshape(2, h, w, 3)
        *outputs, after = run(variables, jnp.asarray(x))
        if f"{localizer}/after_train/{tag}" in fx:  # BN statistics after the train pass (G and iHDRNet)
            expected = _official_variables(localizer, fx, index, target, f"after_train/{tag}")
            jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-5),
                         after, expected["batch_stats"])
        for mode, (masks, retouched) in zip(("eval", "train"), outputs, strict=True):
            key = f"{localizer}/{mode}/%s/{tag}"
            np.testing.assert_allclose(np.asarray(masks)[:, :, ::s, ::s], fx[key % "masks"],
                                       atol=MASK_ATOL, rtol=0, err_msg=f"{tag} {mode} masks")
            np.testing.assert_allclose(np.asarray(retouched)[:, ::s, ::s], fx[key % "retouched"],
                                       atol=1e-4, rtol=0, err_msg=f"{tag} {mode} I'")
        if f"libcom/eval/mask/{tag}" in fx:
            np.testing.assert_array_equal(fx[f"libcom/eval/mask/{tag}"], fx[f"dirl/eval/masks/{tag}"][0])


def _localizer_matches_libcom(checkpoint: str, tmp_path) -> None:
    """The photo read from a PNG, resized to 256 x 256 and normalized: libcom's input bit for bit
    (OpenCV's bytes, torchvision's float32 arithmetic); from it jirl's float64 model gives libcom's
    float64 mask to 1e-9, and the float32 Localizer libcom's float32 mask within the float32 noise
    of the random-weight network itself on this photo (libcom's own float32 and float64 masks
    differ by 1.6e-3 here); the mask comes back at the photo's size."""
    import cv2
    from PIL import Image

    from jirl.inference import Localizer

    with np.load(os.path.join(FIXTURES, "libcom_predict.npz")) as f:
        photo, libcom32, libcom64 = f["photo"], f["mask"], f["mask64"]
    Image.fromarray(photo).save(tmp_path / "photo.png")
    loc = Localizer.from_checkpoint(checkpoint, dtype="float32")
    plan, x = loc.prepare(np.asarray(Image.open(tmp_path / "photo.png")))
    mean, std = np.float32([0.485, 0.456, 0.406]), np.float32([0.229, 0.224, 0.225])
    libcom_input = (cv2.resize(photo, (256, 256)).astype(np.float32) / np.float32(255) - mean) / std
    np.testing.assert_array_equal(x, libcom_input)
    at_256 = loc.run(x[None])["mask"][0][::4, ::4]
    np.testing.assert_allclose(at_256, libcom32, atol=2e-3, rtol=0)
    with jax.enable_x64(True):
        model = loc.loaded.spec.build(loc.loaded.config.model, dtype=jnp.float64)
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), loc.loaded.variables)
        mask64 = jax.jit(lambda v, x: model.apply(v, x)["mask"])(v64, jnp.asarray(x, jnp.float64)[None])
        np.testing.assert_allclose(np.asarray(mask64)[0, ::4, ::4, 0], libcom64, atol=1e-9, rtol=0)
    chex.assert_shape(loc(str(tmp_path / "photo.png")), (180, 300))


def test_convert_cli_reads_libcom_files_into_a_checkpoint_eval_accepts(tmp_path, monkeypatch):
    """libcom's `Inharmonious_G.pth` + `IHDRNet.pth` ({'state_dict': ...}, torch.save) ->
    `python -m jirl.convert madisnet` -> the checkpoint restores and gives the official masks,
    and `jirl.Localizer` on it reproduces libcom's `InharmoniousLocalizationModel` on a photo."""
    torch = pytest.importorskip("torch", reason="the optional extra jirl[torch] is not installed")
    from jirl.configs import madisnet as madisnet_config

    from jirl.convert.official import convert as convert_cli
    from jirl.runtime import checkpoints as ckpt

    with np.load(os.path.join(FIXTURES, "madisnet.npz")) as f:
        fx = dict(f)
    sd = _official_state_dict("dirl", fx, json.loads(str(fx["index"])))
    files = {}
    for part, name in (("g", "Inharmonious_G.pth"), ("ihdrnet", "IHDRNet.pth")):
        state = {k.partition(".")[2]: torch.from_numpy(np.ascontiguousarray(v))
                 for k, v in sd.items() if k.startswith(part + ".")}
        torch.save({"epoch": 60, "best_acc": 0.7, "state_dict": state}, tmp_path / name)
        files[part] = str(tmp_path / name)
    c = madisnet_config.get_config()
    c.model.domain_encoder = False
    out = convert_cli("madisnet", files, str(tmp_path / "ckpt"), c)
    _, model = build_model(c)
    target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
    variables = ckpt.restore_model(out, target, model_cfg=c.model)
    x = (synthetic_tensor("input/48x80", (2 * 48 * 80 * 3,)) * np.float32(10)).reshape(2, 48, 80, 3)
    mask = jax.jit(lambda v, x: model.apply(v, x)["mask"])(variables, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(mask)[:, ::2, ::2], fx["dirl/eval/masks/48x80"][0], atol=MASK_ATOL)
    # jirl.Localizer on that checkpoint (model and config from its meta, resize="train") is
    # libcom's InharmoniousLocalizationModel on a 180 x 300 photo (tests/fixtures/README.md)
    _localizer_matches_libcom(out, tmp_path)
    # the two files given as they are (the folder holding them), as `jirl predict --checkpoint`
    # takes them: recognised as MadisNet(DIRL), converted with the official config (E_dom left
    # out, as no file gives it) into the cache, the same weights
    from jirl.convert import official

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    said = []
    step = official.official_weights(str(tmp_path), announce=said.append)
    assert said[0].startswith("converted the official MadisNet files IHDRNet.pth, Inharmonious_G.pth")
    stored = ckpt.read_meta(step)["config"]
    assert stored["recipe"] == "official" and stored["model"]["domain_encoder"] is False
    chex.assert_trees_all_equal(ckpt.restore_model(step, target, model_cfg=c.model), variables)
    # a MadisNet(UNet) g file under the DIRL config: one clear message
    with pytest.raises(ConversionError, match="not in DIRLNet's encoder or decoder.*madisnet.py:unet"):
        convert.localizer_variables({"in_conv.0.weight": np.zeros(1)}, {}, "dirl")


def test_eval_step_returns_the_mapped_image_in_0_1_and_it_saves_as_rgb(tiny_state, tmp_path):
    from PIL import Image

    from jirl.training.evaluate import _save_masks
    from jirl.training.steps import make_eval_step

    c, spec, model, state = tiny_state
    batch = dict(_batch(), valid=jnp.ones((2,), bool))
    per_image, saved = jax.jit(make_eval_step(spec, c, model.apply))(state.variables(), batch)
    assert set(per_image) == {"mask"} and set(saved) == {"mask", "retouched"}
    chex.assert_shape(saved["retouched"], (2, 32, 32, 3))
    # I' is normalized like the input; the step returns it in [0, 1] units (x * std + mean)
    retouched = np.asarray(model.apply(state.variables(), batch["image"], train=False)["retouched"])
    np.testing.assert_allclose(np.asarray(saved["retouched"]),
                               retouched * np.float32(c.data.std) + np.float32(c.data.mean), atol=1e-5)
    _save_masks(str(tmp_path), np.asarray(saved["retouched"]), np.array(["a.jpg", "b.jpg"]),
                np.array([True, False]))
    png = np.asarray(Image.open(tmp_path / "a.png"))
    assert png.shape == (32, 32, 3) and not (tmp_path / "b.png").exists()
    np.testing.assert_allclose(png / 255, np.asarray(saved["retouched"][0]), atol=0.5 / 255 + 1e-6)


# ---------------------------------------------------------------- one training step in float64


def _step_fixture():
    with np.load(os.path.join(FIXTURES, "madisnet_step.npz")) as f:
        fx = dict(f)
    with np.load(os.path.join(FIXTURES, "madisnet.npz")) as f:
        bn_keys = json.loads(str(f["index"]))  # the BN statistics' keys of the same networks
    return fx, json.loads(str(fx["index"])), bn_keys


def _step_state_dicts(localizer: str, index: dict, bn_keys: dict, fill) -> tuple[dict, dict, dict]:
    """Official (g, ihdrnet, domain_encoder) state_dicts of the fixture's networks with
    `fill(i, key, shape)` as the value of parameter i and default BN statistics."""
    parts = {"g": {}, "ihdrnet": {}, "domain_encoder": {}}
    info = index[localizer]
    for i, (key, shape) in enumerate(zip(info["keys"], info["shapes"], strict=True)):
        part, _, rest = key.partition(".")
        parts[part][rest] = fill(i, key, tuple(shape))
    for key, n in bn_keys[localizer]["stored"]:
        part, _, rest = key.partition(".")
        parts[part][rest] = np.zeros(n, np.float32) if rest.endswith("mean") else np.ones(n, np.float32)
    for k in [k for k in parts["domain_encoder"] if k.startswith("conv") and k.count(".") == 1]:
        if k.endswith(".bias"):  # named_parameters lists the partial conv's bias once, state_dict twice
            parts["domain_encoder"][k.replace(".bias", ".conv.bias")] = parts["domain_encoder"][k]
    return parts["g"], parts["ihdrnet"], parts["domain_encoder"]


def _to_official(tree: dict, keys: dict, flat_index: dict, n: int) -> list[np.ndarray | None]:
    """A jirl params tree laid out as the official tensors (flattened, in the fixture's order):
    `keys` / `flat_index` are the same tree holding, per entry, its official tensor and position."""
    out: list = [None] * n
    for leaf, key, pos in zip(jax.tree.leaves(tree), jax.tree.leaves(keys), jax.tree.leaves(flat_index),
                              strict=True):
        leaf, key, pos = np.asarray(leaf).ravel(), np.asarray(key).ravel(), np.asarray(pos).ravel()
        for i in np.unique(key):
            if out[int(i)] is None:
                out[int(i)] = np.full(int(pos[key == i].max()) + 1, np.nan)
            out[int(i)][pos[key == i].astype(np.int64)] = leaf[key == i]
    return out


@pytest.mark.parametrize("localizer", ["dirl", "unet"])
def test_one_float64_training_step_matches_the_official(localizer):
    """Official MadisNet(DIRL) / MadisNet(UNet) with E_dom, float64, one step of `train.py` on a
    2 x 64 x 64 composite (tests/fixtures/README.md), through the train step's loss function and
    optimizer: the loss terms, the gradient of every parameter (sum, sum of squares, 6 sampled
    entries) and the change of every parameter after the three Adams (coupled L2 1e-4); the VGG
    layers get no gradient and do not move."""
    from jirl.configs import madisnet as madisnet_config

    fx, index, bn_keys = _step_fixture()
    info, n = index[localizer], len(index[localizer]["keys"])
    c = madisnet_config.get_config("" if localizer == "dirl" else localizer)
    with jax.enable_x64(True):
        spec = resolve_spec(c.model)
        model = spec.build(c.model, dtype=jnp.float64)
        shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
        target = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes)

        def convert_with(fill):
            g, ihdrnet, domain_encoder = _step_state_dicts(localizer, index, bn_keys, fill)
            return convert.madisnet_variables(g, ihdrnet, target, localizer, domain_encoder)

        variables = convert_with(lambda i, k, s: synthetic_tensor(k, s))
        # the same conversion of each tensor's index and of each entry's position in it
        keys = convert_with(lambda i, k, s: np.full(s, i, np.float32))["params"]
        positions = convert_with(lambda i, k, s: np.arange(np.prod(s), dtype=np.float32).reshape(s))
        flat_index = positions["params"]
        variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        state = create_train_state(model, make_optimizer(c.optimizer, 10, spec), variables)
        mask = fx["mask"].astype(np.float64)
        b, h, w = index["shape"]
        image = (synthetic_tensor("step/image", (b * h * w * 3,)) * np.float32(2)).reshape(b, h, w, 3)
        image = image + mask.astype(np.float32) * np.array([1.5, -1.0, 0.5], np.float32)
        batch = {"image": jnp.asarray(image, jnp.float64), "mask": jnp.asarray(mask)}
        loss_fn = make_loss_fn(spec, c)  # the train step's loss: one gradient, applied as it applies it

        @jax.jit
        def run(state, batch):
            (loss, (logs, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params, state, batch)
            return grads, state.apply_gradients(grads=grads, batch_stats=batch_stats), logs

        grads, new_state, logs = run(state, batch)
        delta = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new_state.params, state.params)
    jirl_losses = [logs["total"], logs["detection"], logs.get("attention", 0.0), logs["ddm"], logs["di"]]
    np.testing.assert_allclose(np.array(jirl_losses, np.float64), fx[f"{localizer}/losses"], rtol=1e-10,
                               atol=1e-12, err_msg=f"losses {info['losses']}")
    grads = _to_official(grads, keys, flat_index, n)
    deltas = _to_official(delta, keys, flat_index, n)
    stats, samples = fx[f"{localizer}/grad_stats"], fx[f"{localizer}/grad_samples"]
    scale = np.sqrt(np.nansum(stats[:, 1]))  # the global gradient norm: errors are relative to it
    worst = {}
    for i, key in enumerate(info["keys"]):
        sample = fx[f"{localizer}/sample_index"][i]
        sample = sample[sample >= 0]
        g, d = grads[i], deltas[i]
        assert g.size == np.prod(info["shapes"][i]) and not np.isnan(g).any(), key
        if np.isnan(stats[i, 0]):  # no gradient in torch (frozen, or never called): zero in jirl
            err = {"grad": np.abs(g).max()}
        else:
            err = {"grad": max(np.abs(g[sample] - samples[i, :len(sample)]).max(),
                               abs(g.sum() - stats[i, 0]) / np.sqrt(g.size)) / scale,
                   "grad_sumsq": abs((g * g).sum() - stats[i, 1]) / scale**2,
                   "delta": np.abs(d[sample] - fx[f"{localizer}/delta_samples"][i, :len(sample)]).max(),
                   "delta_max": abs(np.abs(d).max() - fx[f"{localizer}/delta_stats"][i, 1])}
        if key.startswith("domain_encoder.conv"):  # the frozen VGG layers do not move at all
            err["delta"] = np.abs(d).max()
        for k, v in err.items():
            worst.setdefault(k, []).append((float(v), key))
    worst = {k: sorted(v, reverse=True)[:6] for k, v in worst.items()}
    limits = {"grad": 1e-10, "grad_sumsq": 1e-10, "delta": 1e-12, "delta_max": 1e-12}
    assert all(worst.get(k, [(0,)])[0][0] <= v for k, v in limits.items()), worst


def test_the_speed_comparison_takes_only_what_the_official_madisnet_runs(monkeypatch):
    """benchmarks/compare_official.py's MadisNet side follows the localizer, DIRL's ggd_ch and
    E_dom on / off; any other difference from the official model is refused before it runs."""
    from jirl.configs import madisnet as madisnet_config

    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
    from common import model_config_mismatch
    from official_madisnet import config_problems, official_message

    def problems(variant: str, **overrides) -> list[str]:
        c = madisnet_config.get_config(variant)
        c.update_from_flattened_dict(overrides)
        return config_problems(c, model_config_mismatch)

    assert problems("") == problems("unet") == problems("noddm") == []
    assert problems("", **{"model.localizer.ggd_ch": 8, "model.ihdrnet.slice_method": "onehot"}) == []
    assert official_message(madisnet_config.get_config("noddm")) == {
        "localizer": "dirl", "ggd_ch": 32, "domain_encoder": False, "loss_weights": [1.0, 0.0, 1.0],
        "lambda_ddm": 1e-3, "lambda_di": 1e-3, "ddm_margin": 1e-3}
    assert "model.vgg_features" in problems("quick") and "model.localizer.stem_features" in problems("quick")
    assert problems("", **{"model.ihdrnet.theta": 0.5}) == ["model.ihdrnet.theta"]
    assert problems("", **{"loss.mode": "bce_ssim_iou"}) == ["loss.mode"]
    assert "no 'rsrnet' localizer" in problems("rsrnet")[0]

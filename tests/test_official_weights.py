"""The released .pth files straight into predict / Localizer / Harmonizer: recognised by their
keys, converted once into a cache keyed by their content and the config, reused after; without
torch, the exact `jirl convert` command. (libcom's full-size pair: tests/test_madisnet.py.)"""

import builtins
import json
import os

import chex
import jax
import numpy as np
import pytest
from jirl_testing import run, stored_variables, subprocess_env, tiny_checkpoint, tiny_dirl_config
from PIL import Image

from jirl import inference
from jirl.convert import official
from jirl.runtime.torch_io import ConversionError

torch = pytest.importorskip("torch", reason="the optional extra jirl[torch] is not installed")

TINY_DIRL = ["--config.model.stem_features=4", "--config.model.stage_features=(4,4,8,8,8)",
             "--config.model.ggd_ch=4", "--config.data.crop_size=32"]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A tiny DIRL's checkpoint and its weights as the official encoder / decoder files."""
    from test_convert import official_dirl_files

    root = tmp_path_factory.mktemp("released")
    config = tiny_dirl_config()
    step, _, _ = tiny_checkpoint(root / "ckpt", config)
    weights = root / "weights"
    weights.mkdir()
    enc, dec = official_dirl_files(stored_variables(step), weights)
    os.rename(enc, weights / "encoder_epochbest.pth")
    os.rename(dec, weights / "decoder_epochbest.pth")
    return step, config, weights / "encoder_epochbest.pth", weights / "decoder_epochbest.pth"


def _save(path, keys):
    torch.save({k: torch.zeros(1) for k in keys}, path)
    return str(path)


def test_each_release_is_recognised_by_its_keys(tmp_path):
    files = {
        "enc": ["inconv.weight", "encoder1.0.conv1.weight"],
        "dec": ["trans.im0.top_down.conv.weight", "attention_layers.mda_0.ChannelGate.conv.weight"],
        "g_dirl": ["encoder.inconv.weight", "decoder.trans.im0.top_down.conv.weight"],
        "g_unet": ["in_conv.0.weight", "downs.d0.0.conv1.weight"],
        "ihdrnet": ["coeffs.splat_features.0.conv.weight", "guide.conv1.conv.weight"],
        "edom": ["conv0.conv.weight", "adaptor0.conv.weight", "weight"],
        "net_g": ["model_layer0.weight"],
        "net_d": ["D.conv1.weight_orig", "convl1.weight_orig"],
        "other": ["fc.weight"],
    }
    p = {name: _save(tmp_path / f"{name}.pth", keys) for name, keys in files.items()}
    cases = [((p["enc"], p["dec"]), "dirl", {"encoder": p["enc"], "decoder": p["dec"]}, "dirl"),
             ((p["ihdrnet"], p["g_dirl"]), "madisnet", {"g": p["g_dirl"], "ihdrnet": p["ihdrnet"]},
              "madisnet"),
             ((p["g_unet"], p["ihdrnet"], p["edom"]), "madisnet",
              {"g": p["g_unet"], "ihdrnet": p["ihdrnet"], "domain_encoder": p["edom"]}, "madisnet:unet"),
             ((p["g_unet"],), "unet", {"checkpoint": p["g_unet"]}, "unet"),
             ((p["net_g"], p["net_d"]), "rainnet", {"checkpoint": p["net_g"], "discriminator": p["net_d"]},
              "rainnet")]
    for paths, model, by_flag, config in cases:
        assert official.identify(paths) == official.OfficialSet(model, by_flag, config), paths
    for paths, message in (((p["enc"],), "do not make one model"),
                           ((p["enc"], p["enc"]), "hold the same network"),
                           ((p["net_g"], p["other"]), "no DIRL, MadisNet, UNet or RainNet network"),
                           ((p["net_d"],), "do not make one model")):
        with pytest.raises(ConversionError, match=message):
            official.identify(paths)


def test_a_checkpoint_argument_names_weights_by_list_file_or_folder(released, tmp_path):
    step, _, enc, dec = released
    assert official.weight_files(f"{enc},{dec}") == [str(enc), str(dec)]
    assert official.weight_files(str(enc)) == [str(enc)]
    assert official.weight_files(str(enc.parent)) == sorted([str(dec), str(enc)])
    assert official.weight_files(step) is None  # a jirl step directory
    assert official.weight_files(os.path.dirname(os.path.dirname(step))) is None  # a workdir
    assert official.weight_files(str(tmp_path)) is None  # an empty folder: no checkpoint at all


def test_the_localizer_converts_once_and_reuses_the_conversion(released, tmp_path, monkeypatch, capsys):
    """The same masks as the checkpoint the files came from; the second load, with the files in
    another order, hashes them and finds the conversion; another config is another conversion."""
    step, config, enc, dec = released
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    reference = inference.Localizer.from_checkpoint(step, dtype="float32")
    first = inference.Localizer.from_checkpoint(f"{enc},{dec}", config=config, dtype="float32")
    said = capsys.readouterr().err
    assert "converted the official DIRL files encoder_epochbest.pth, decoder_epochbest.pth into" in said
    chex.assert_trees_all_equal(first.loaded.variables, reference.loaded.variables)
    photo = np.random.default_rng(0).integers(0, 256, (40, 60, 3), np.uint8)
    np.testing.assert_array_equal(first(photo), reference(photo))
    (entry,) = os.listdir(tmp_path / "cache" / "jirl" / "converted")
    source = json.loads((tmp_path / "cache" / "jirl" / "converted" / entry / "source.json").read_text())
    assert source == {"model": "dirl", "config": "dirl",
                      "files": {"encoder": str(enc), "decoder": str(dec)}}
    again = inference.Localizer.from_checkpoint(f"{dec},{enc}", config=config, dtype="float32")
    cached = tmp_path / "cache" / "jirl" / "converted" / entry
    assert f"using {cached}, converted earlier" in capsys.readouterr().err
    assert again.loaded.checkpoint == first.loaded.checkpoint
    other = config.copy_and_resolve_references()
    other.data.crop_size = 64
    official.official_weights(f"{enc},{dec}", other)
    assert len(os.listdir(tmp_path / "cache" / "jirl" / "converted")) == 2
    # the official config of DIRL is full size: these tiny files do not fit it, and it says so
    with pytest.raises(ConversionError, match="do not fit the config they were converted with \\(dirl\\)"):
        official.official_weights(f"{enc},{dec}")


def test_without_torch_the_error_is_the_convert_command_and_a_cached_conversion_still_loads(
        released, tmp_path, monkeypatch):
    step, config, enc, dec = released
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cached = official.official_weights(f"{enc},{dec}", config, announce=lambda _: None)
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    assert official.official_weights(f"{enc},{dec}", config, announce=lambda _: None) == cached
    with pytest.raises(ConversionError) as e:
        official.official_weights(f"{enc},{dec}", announce=lambda _: None)
    message = str(e.value)
    assert "pip install 'jirl[torch]'" in message
    assert f"jirl convert dirl --encoder {enc} --decoder {dec} --output DIR" in message


def test_predict_on_a_folder_with_the_released_files(released, tmp_path):
    """`predict.py --checkpoint enc.pth,dec.pth` (with the config the files were trained with):
    converted on the first run, the cached conversion on the second, the same masks as the
    checkpoint the files came from."""
    step, _, enc, dec = released
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 56, 3), np.uint8)).save(
            photos / f"p{i}.png")
    env = {**subprocess_env(), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    common = ["predict.py", "--input", str(photos), "--dtype", "float32", "--compile_cache="]
    args = [*common, "--checkpoint", f"{enc},{dec}", "--config", "dirl:quick", *TINY_DIRL]
    first = run([*args, "--output", str(tmp_path / "a")], env)
    assert "converted the official DIRL files encoder_epochbest.pth, decoder_epochbest.pth" in first.stderr
    second = run([*args, "--output", str(tmp_path / "b")], env)
    assert "converted earlier from" in second.stderr and "converted the official" not in second.stderr
    run([*common, "--checkpoint", step, "--output", str(tmp_path / "c")], env)
    for name in ("p0_mask.png", "p1_mask.png"):
        masks = [np.asarray(Image.open(tmp_path / d / name)) for d in "abc"]
        np.testing.assert_array_equal(masks[0], masks[2])
        np.testing.assert_array_equal(masks[1], masks[2])


def test_the_test_writers_make_files_the_importers_read_back(tmp_path, monkeypatch):
    """tests/official_files.py (used by tests/test_docs.py) writes libcom's pair and RainNet's
    generator from tiny jirl models: recognised and converted back, they are those models."""
    from jirl_testing import tiny_madisnet_config, tiny_rainnet_config
    from official_files import libcom_files, rainnet_generator_file

    from jirl.models import build_model, init_model_variables

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    madisnet = tiny_madisnet_config(domain_encoder=False)
    rainnet = tiny_rainnet_config()
    rainnet.model.discriminator = False
    for config, write in ((madisnet, lambda v: ",".join(libcom_files(v, tmp_path))),
                          (rainnet, lambda v: rainnet_generator_file(v, tmp_path / "net_G_last.pth"))):
        _, model = build_model(config)
        variables = jax.device_get(init_model_variables(config, model, seed=3))
        spec = write(variables)
        assert official.identify(official.weight_files(spec)).model == config.model.name
        step = official.official_weights(spec, config, announce=lambda _: None)
        chex.assert_trees_all_equal(stored_variables(step), variables)
    # a generator alone (no discriminator: no batch_stats at all) restores as a Harmonizer
    harmonizer = inference.Harmonizer.from_checkpoint(str(tmp_path / "net_G_last.pth"), config=rainnet)
    assert harmonizer.loaded.variables["batch_stats"] == {}

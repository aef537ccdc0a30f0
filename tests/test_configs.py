"""Configs by name or by path from any directory (jirl.runtime.configs), and the one variant parser
every config file uses (jirl.configs.common.parse_variants)."""

import os

import pytest
from jirl.configs import common

from jirl.runtime import configs

SHIPPED = ["default", "dirl", "madisnet", "rainnet", "rsrnet", "unet"]


def test_the_shipped_configs_are_listed_and_found_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert configs.available() == SHIPPED
    folder = configs.packaged_dir()
    assert configs.resolve("dirl") == os.path.join(folder, "dirl.py")
    assert configs.resolve("dirl:quick") == os.path.join(folder, "dirl.py") + ":quick"
    # a configs/<name>.py path that is not here is the shipped config of that name
    assert configs.resolve("configs/rsrnet.py:quick,row2") == (
        os.path.join(folder, "rsrnet.py") + ":quick,row2")
    assert configs.resolve("unet.py:") == os.path.join(folder, "unet.py") + ":"
    assert configs.load("rsrnet:quick,row2").model.combine == "none"


def test_a_file_that_exists_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    mine = tmp_path / "configs" / "dirl.py"
    mine.write_text("from jirl.configs import dirl\n\ndef get_config(arg=None):\n"
                    "    c = dirl.get_config(arg)\n    c.seed = 7\n    return c\n")
    assert configs.resolve("configs/dirl.py:quick") == f"{mine}:quick"
    assert configs.load("configs/dirl.py:quick").seed == 7
    assert configs.load("dirl:quick").seed == 42  # a bare name is always the shipped config


def test_an_unknown_config_names_what_ships(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argument in ("nope", "nope.py:quick", "elsewhere/dirl.py", ""):
        with pytest.raises(ValueError) as e:
            configs.resolve(argument)
        assert ("no config file" in str(e.value) and ", ".join(SHIPPED) in str(e.value)
                or "the config is empty" in str(e.value)), argument


def test_parse_variants_switches_groups_and_sizes():
    v = common.parse_variants("quick,noddm,unet", "madisnet", switches=("noddm",),
                              groups={"localizer": ("dirl", "unet", "rsrnet")})
    assert (v.quick, v.noddm, v.localizer) == (True, True, "unet")
    v = common.parse_variants(None, "madisnet", switches=("noddm",),
                              groups={"localizer": ("dirl", "unet", "rsrnet")})
    assert (v.quick, v.noddm, v.localizer) == (False, False, None)
    assert common.parse_variants("full", "dirl").quick is False
    assert common.parse_variants(" quick , ", "dirl").quick is True
    for arg, message in (("fast", "unknown variant 'fast' of configs/dirl.py"),
                         ("quick,full", "conflicting variants 'quick,full'"),
                         ("paper,paper", "conflicting variants 'paper,paper'")):
        with pytest.raises(ValueError, match=message):
            common.parse_variants(arg, "dirl", switches=("paper",))


def test_every_shipped_config_parses_its_variants_with_the_helper():
    """Each config file's variants, combined as users combine them."""
    from jirl.configs import dirl, madisnet, rainnet, rsrnet, unet

    assert dirl.get_config("quick,paper").loss.variant == "paper"
    assert dirl.get_config("paper,quick").model.stage_blocks == (1, 1, 1, 1, 1)
    assert unet.get_config("quick").data.crop_size == 32
    assert rsrnet.get_config("row8,quick").model.upsample == "bilinear"
    assert madisnet.get_config("rsrnet,quick,noddm").model.localizer.name == "rsrnet"
    assert rainnet.get_config("in").model.norm == "in"
    assert rainnet.get_config("quick,rain").model.norm == "rain"
    assert rainnet.get_config("in,quick").data.source == "synthetic"
    with pytest.raises(ValueError, match="conflicting variants 'in,rain'"):
        rainnet.get_config("in,rain")
    with pytest.raises(ValueError, match="unknown variant 'quick_in'"):
        rainnet.get_config("quick_in")

"""Checks of a config against what it claims or needs: a publication's recipe (ImageNet
weights, iHarmony4), the data a score is on, the real images a harmonizer learns from."""

from __future__ import annotations

import ml_collections

from jirl import data as jdata
from jirl.models import resolve_spec


def recipe_warnings(config: ml_collections.ConfigDict) -> list[str]:
    """What keeps a config marked as a publication's recipe (`config.recipe` "official" or
    "paper") from being that recipe: the ImageNet backbone the paper starts from, iHarmony4."""
    recipe = config.get("recipe", "")
    if recipe not in ("official", "paper"):
        return []
    name = config.model.name
    problems = []
    for p in resolve_spec(config.model).pretrained:
        if not config.model.get(p.key, ""):
            problems.append(
                f"the {recipe} {name} recipe starts from ImageNet {p.kind} weights, but "
                f"config.model.{p.key} is unset, so it starts from random weights; pass "
                f"--config.model.{p.key}=<torchvision {p.kind} .pth>")
    problems += data_warnings(config, "trains on")
    return problems


def data_warnings(config: ml_collections.ConfigDict, verb: str = "is scored on") -> list[str]:
    """The data a publication's recipe (`config.recipe` official / paper) uses, when the config
    reads other data: a converted official checkpoint scored on the embedded synthetic set."""
    recipe = config.get("recipe", "")
    if recipe not in ("official", "paper") or config.data.source == "ihd":
        return []
    what = "the embedded synthetic data" if config.data.source == "synthetic" else "your own folder"
    return [f"the {recipe} {config.model.name} recipe {verb} iHarmony4, but config.data.source "
            f"is {config.data.source!r} ({what}); for iHarmony4 pass --config.data.source=ihd "
            "--config.data.ihd.manual_dir=<its folder> (docs/data.md)"]


def check_real_images(spec, config: ml_collections.ConfigDict, split: str) -> None:
    """Raises ValueError when the task learns or scores against real images (a harmonizer's) and
    examples of `split` have none: the composite would stand in, and the model would learn to
    change nothing (or be scored against its own input)."""
    if "real" not in spec.task.batch_keys:
        return
    missing = jdata.missing_real_images(config.data, split)
    if missing:
        raise ValueError(
            f"{config.model.name} turns a composite into its real image, but {missing}: without "
            "them the composite stands in for the real image and the model learns to change "
            "nothing. Add the real images, or train a localizer on this data.")


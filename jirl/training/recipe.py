"""What keeps a config that claims a publication's recipe from being that recipe."""

from __future__ import annotations

import ml_collections

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
    if config.data.source != "ihd":
        problems.append(
            f"the {recipe} {name} recipe trains on iHarmony4, but config.data.source is "
            f"{config.data.source!r}; pass --config.data.source=ihd (see README, Data)")
    return problems

"""What the config files share: the variant-string parser and the CPU demo's schedule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ml_collections

SIZES = ("full", "quick")  # "full": the published setting (the default); "quick": the CPU demo


def parse_variants(arg: str | None, config: str, *, switches: Sequence[str] = (),
                   groups: Mapping[str, Sequence[str]] | None = None) -> ml_collections.ConfigDict:
    """The comma-separated variants `arg` of configs/`config`.py as a ConfigDict.

    Every config takes "full" (the published setting, the default) or "quick" (the CPU demo) as
    `quick`; `switches` are further on/off variants (absent: False); each of `groups` is a choice
    of at most one of its values (absent: None). Unknown, repeated and conflicting variants raise a
    ValueError that lists what the config takes; "" and None are the default.
    """
    groups = dict(groups or {})
    groups["size"] = SIZES
    chosen = ml_collections.ConfigDict({**{s: False for s in switches}, **{g: None for g in groups}})
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    for part in parts:
        group = next((g for g, values in groups.items() if part in values), None)
        if part in switches and not chosen[part]:
            chosen[part] = True
        elif group is not None and chosen[group] is None:
            chosen[group] = part
        else:
            takes = ", ".join([*switches, *(" | ".join(v) for v in groups.values())])
            if part in switches or group is not None:
                raise ValueError(f"conflicting variants {arg!r} of configs/{config}.py: {part!r} "
                                 f"repeats a variant or is a second choice of its group; it "
                                 f"takes a comma-separated choice of: {takes}")
            raise ValueError(f"unknown variant {part!r} of configs/{config}.py (in {arg!r}); it "
                             f"takes a comma-separated choice of: {takes}")
    chosen.quick = chosen.size == "quick"
    del chosen["size"]
    return chosen


def quick_training(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`c` on the CPU demo's data, optimizer and schedule (everything but the model and its
    loss): 32 px crops of 40 px synthetic composites, 2,700 steps of 16, Adam 1e-3. The quick
    localizers share it, so that their scores compare."""
    c.recipe = "quick"
    c.data.image_size = 40
    c.data.crop_size = 32
    c.data.num_train = 2400
    c.data.num_test = 200
    c.batch_size = 16
    c.optimizer.learning_rate = 1e-3
    c.optimizer.weight_decay = 0.0
    c.num_epochs = 20  # 2,700 steps of 16 over the 2,160 training composites
    c.optimizer.decay_epochs = (15, 18)
    c.log_every_steps = 25
    c.eval_every_steps = 900
    c.eval.batch_size = 50
    return c

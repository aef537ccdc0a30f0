"""The raw examples of a split: the prepared TFDS data (synthetic, iHarmony4) or an own folder,
with "val" carved from "train" by whole real-image groups (`jirl.data.splits`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from jirl.data.composites import real_image_key
from jirl.data.schema import SPLITS, resolve_data_dir, validate_data_config
from jirl.data.splits import IndexView, ValidationSplit, carve_validation


@dataclasses.dataclass
class _Base:
    """A prepared split of a source, with what carving a validation split from it needs."""

    source: Sequence[dict]
    group_keys: Callable[[], list[str]]  # the real image of each record, in record order
    cache_key: tuple  # identifies the data (a prepared TFDS directory, an indexed folder)


def _tfds_base(builder, split: str) -> _Base:
    from jirl.data.record_index import builder_record_keys

    def group_keys() -> list[str]:
        return [real_image_key(subset, name) for subset, name in builder_record_keys(builder, split)]

    return _Base(builder.as_data_source(split=split), group_keys, ("tfds", builder.data_dir, split))


def prepared_once(make: Callable[[], Any]) -> Any:
    """`make()` (which prepares data if needed, then opens it) run by process 0 first while the
    other processes of a multi-host job wait, then by them: the hosts share the data directory
    (shared storage), and two preparing it at once collide on its final rename."""
    import jax

    if jax.process_count() == 1:
        return make()
    from jax.experimental import multihost_utils

    made = make() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("jirl_data_prepared")
    return made if made is not None else make()


def _base_source(data_cfg, split: str) -> _Base:
    """The prepared ``split`` ("train" or "test") of ``data.source``."""
    source = data_cfg["source"]
    if source == "synthetic":
        from jirl.data.tfds_synthetic import synthetic_builder

        builder = prepared_once(lambda: synthetic_builder(
            resolve_data_dir(data_cfg),
            image_size=data_cfg["image_size"],
            num_train=data_cfg["num_train"],
            num_test=data_cfg["num_test"],
            seed=data_cfg["synthetic_seed"],
        ))
        return _tfds_base(builder, split)
    if source == "ihd":
        from jirl.data.ihd import ihd_builder

        ihd_cfg = data_cfg["ihd"]
        builder = prepared_once(lambda: ihd_builder(
            resolve_data_dir(data_cfg),
            config=ihd_cfg["config"],
            manual_dir=ihd_cfg["manual_dir"] or None,
            strict_counts=ihd_cfg["strict_counts"],
        ))
        return _tfds_base(builder, split)
    # source == "folder"
    from jirl.data.folder import folder_source

    directory = data_cfg["folder"][split]
    if not directory:
        raise ValueError(
            f"data.source='folder' needs data.folder.{split}: the directory of {split} composites "
            "and masks (composite_images/ + masks/ [+ real_images/], or name.jpg + name_mask.png)"
        )
    folder = folder_source(directory)
    return _Base(folder, folder.group_keys, ("folder", *folder.cache_key))


_SPLIT_CACHE: dict[tuple, ValidationSplit] = {}


def _validation_split(data_cfg, base: _Base) -> ValidationSplit:
    fraction, seed = float(data_cfg["validation_fraction"]), int(data_cfg["validation_seed"])
    key = (base.cache_key, fraction, seed)
    carved = _SPLIT_CACHE.get(key)
    if carved is None:
        carved = carve_validation(base.group_keys(), fraction, seed)
        _SPLIT_CACHE[key] = carved
    return carved


def load_source(data_cfg, split: str) -> Sequence[dict]:
    """Random-access source of the raw examples of ``split``; prepares (and caches) the data.

    ``split``: "train" (the prepared train split minus "val"), "val" (``data.validation_fraction``
    of it, whole real-image groups chosen by ``data.validation_seed``; see ``jirl.data.splits``) or
    "test". Records are dicts: ``composite``/``real`` uint8 [H, W, 3], ``mask`` uint8 [H, W, 1]
    (0/255), ``subset``/``name`` bytes (str from a folder source), ``mask_fraction`` float.
    """
    validate_data_config(data_cfg)
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is unknown; use one of {', '.join(SPLITS)}")
    fraction = data_cfg["validation_fraction"]
    if split == "val" and fraction == 0:
        raise ValueError(
            "there is no 'val' split: data.validation_fraction is 0. Set it in (0, 1) (e.g. 0.1) to "
            "hold out part of train, or score 'test' instead (eval.validation_split='test')"
        )
    base = _base_source(data_cfg, "test" if split == "test" else "train")
    if split == "test" or fraction == 0:
        return base.source
    carved = _validation_split(data_cfg, base)
    indices = carved.train if split == "train" else carved.val
    if len(indices) == 0:
        raise ValueError(
            f"the '{split}' split is empty: data.validation_fraction={fraction} of "
            f"{len(base.source)} training examples ({len(carved.val)} held out for 'val', "
            f"{len(carved.train)} left for 'train'). "
            + ("Raise" if split == "val" else "Lower")
            + " data.validation_fraction (0 disables 'val') or add data."
        )
    return IndexView(base.source, indices, name=split)


def missing_real_images(data_cfg, split: str) -> str | None:
    """What is missing when examples of `split` have no real image (an own folder without
    real_images/ or name_real.jpg: the composite stands in for it), else None. The prepared
    TFDS data always has real images."""
    validate_data_config(data_cfg)
    if data_cfg["source"] != "folder":
        return None
    from jirl.data.folder import folder_source

    directory = data_cfg["folder"]["test" if split == "test" else "train"]
    if not directory:
        return None
    source = folder_source(directory)
    missing = source.without_real
    if not missing:
        return None
    where = ("real_images/<a>.jpg beside composite_images/ (iHarmony4 naming)" if source.layout == "ihd"
             else "name_real.jpg beside name.jpg")
    return (f"{len(missing)} of {len(source)} examples in {source.directory} have no real image "
            f"(e.g. {missing[0]}; expected {where})")

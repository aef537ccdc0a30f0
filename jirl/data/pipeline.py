"""The input pipeline: TFDS ArrayRecord data sources read through ``grain.MapDataset``.

Batches are dicts of numpy arrays (host side):

* ``image``: float32 [B, crop, crop, 3], the composite normalized with ``mean``/``std``;
* ``mask``: float32 [B, crop, crop, 1] in {0, 1};
* ``real``: float32 [B, crop, crop, 3], normalized like ``image``;
* ``subset``, ``name``: numpy str arrays [B];
* eval batches only: ``valid`` bool [B], False on padding rows of the last batch.

Splits: "train" and "test" as prepared, except that "val" (``data.validation_fraction`` of the
prepared train split, whole real-image groups chosen by ``data.validation_seed``, see
``jirl.data.splits``) is taken out of "train". The config is checked by ``validate_data_config``
on every entry point; nothing is defaulted here (configs/default.py ``data_config()`` has the keys).

Training order. Let ``N`` be the number of training examples, ``B`` the per-process batch size,
``n`` the process count and ``G = B * n`` the global batch. Epoch ``e`` is the permutation
``default_rng([seed, 0, e]).permutation(N)``; its first ``steps_per_epoch * G`` entries form the
epoch's global batches (remainder dropped), and process ``p`` reads rows ``[p*B, (p+1)*B)`` of
each. Example ``i`` is augmented with ``default_rng([seed, 1, e, i])``. So every batch is a pure
function of (seed, step, process), which makes ``start_step`` resumption free and results
independent of the number of workers.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Callable, Iterator, Sequence

import grain
import numpy as np
from absl import flags

from jirl.data import transforms
from jirl.data.composites import real_image_key
from jirl.data.ihd_lists import CONFIG_NAMES as IHD_CONFIG_NAMES
from jirl.data.splits import IndexView, ValidationSplit, carve_validation

VALID_SOURCES = ("synthetic", "ihd", "folder")
SPLITS = ("train", "val", "test")  # "val" is carved from the prepared train split
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_DATA_DIR = "~/.cache/jirl/tensorflow_datasets"
# Training iterators are endless in practice: 2**40 steps.
_ENDLESS_STEPS = 2**40


# ------------------------------------------------------------------------------------------------
# Config validation: the pipeline reads what it is given and supplies no defaults.

_MISSING = object()


def _lookup(data_cfg, key: str):
    node = data_cfg
    for part in key.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError):
            return _MISSING
    return node


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_triple(value) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == 3
        and all(_is_real(v) for v in value)
    )


def _str_or_none(value) -> bool:
    return value is None or isinstance(value, str)


# key -> (check, what a valid value is). Keys of every source, then per source.
_COMMON_KEYS: dict[str, tuple[Callable, str]] = {
    "source": (lambda v: v in VALID_SOURCES, f"one of {', '.join(VALID_SOURCES)}"),
    "data_dir": (_str_or_none, "a directory (str) or None for $JIRL_DATA_DIR / " + DEFAULT_DATA_DIR),
    "crop_size": (lambda v: _is_int(v) and v >= 1, "an int >= 1 (the model input size, e.g. 224)"),
    "preprocess": (lambda v: v in transforms.PREPROCESS,
                   f"one of {', '.join(transforms.PREPROCESS)} (DIRL's crop + flip, RainNet's resize)"),
    "mean": (_is_triple, "three numbers (per-channel mean of [0, 1] pixels)"),
    "std": (lambda v: _is_triple(v) and all(x > 0 for x in v), "three numbers > 0"),
    "validation_fraction": (
        lambda v: _is_real(v) and 0 <= v < 1,
        "a number in [0, 1): the share of train held out as 'val' (0: no 'val' split)",
    ),
    "validation_seed": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "num_workers": (lambda v: _is_int(v) and v >= 0, "an int >= 0 (0: read in this process)"),
    "num_threads": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "prefetch_batches": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
}
_SOURCE_KEYS: dict[str, dict[str, tuple[Callable, str]]] = {
    "synthetic": {
        "image_size": (lambda v: _is_int(v) and v >= 16, "an int >= 16"),
        "num_train": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
        "num_test": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
        "synthetic_seed": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    },
    "ihd": {
        "ihd.config": (lambda v: v in IHD_CONFIG_NAMES, f"one of {', '.join(IHD_CONFIG_NAMES)}"),
        "ihd.manual_dir": (lambda v: isinstance(v, str), "a directory (str; '' once prepared)"),
        "ihd.strict_counts": (lambda v: isinstance(v, bool), "True or False"),
    },
    "folder": {
        "folder.train": (lambda v: isinstance(v, str), "a directory (str)"),
        "folder.test": (lambda v: isinstance(v, str), "a directory (str; '' until 'test' is read)"),
    },
}


def validate_data_config(data_cfg) -> None:
    """Raises ValueError naming the first missing or invalid ``data.*`` key and what it must be.

    Checks the keys every source reads and those of ``data.source``'s own (configs/default.py
    ``data_config()`` has them all).
    """
    if data_cfg is None:
        raise ValueError("the data config is None; pass config.data (see configs/default.py data_config())")

    def check(key: str, valid: Callable, expected: str) -> None:
        value = _lookup(data_cfg, key)
        if value is _MISSING:
            raise ValueError(
                f"data.{key} is missing from the config; add it ({expected}); configs/default.py "
                "data_config() lists every data key"
            )
        if not valid(value):
            raise ValueError(f"data.{key}={value!r} is invalid: it must be {expected}")

    for key, (valid, expected) in _COMMON_KEYS.items():
        check(key, valid, expected)
    for key, (valid, expected) in _SOURCE_KEYS[data_cfg["source"]].items():
        check(key, valid, expected)


def resolve_data_dir(data_cfg) -> str:
    """``data_cfg.data_dir``, else ``$JIRL_DATA_DIR``, else ``DEFAULT_DATA_DIR``."""
    data_dir = data_cfg["data_dir"] or os.environ.get("JIRL_DATA_DIR") or DEFAULT_DATA_DIR
    return os.path.expanduser(str(data_dir))


# ------------------------------------------------------------------------------------------------
# Sources and the validation split.


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


def _base_source(data_cfg, split: str) -> _Base:
    """The prepared ``split`` ("train" or "test") of ``data.source``."""
    source = data_cfg["source"]
    if source == "synthetic":
        from jirl.data.tfds_synthetic import synthetic_builder

        builder = synthetic_builder(
            resolve_data_dir(data_cfg),
            image_size=data_cfg["image_size"],
            num_train=data_cfg["num_train"],
            num_test=data_cfg["num_test"],
            seed=data_cfg["synthetic_seed"],
        )
        return _tfds_base(builder, split)
    if source == "ihd":
        from jirl.data.ihd import ihd_builder

        ihd_cfg = data_cfg["ihd"]
        builder = ihd_builder(
            resolve_data_dir(data_cfg),
            config=ihd_cfg["config"],
            manual_dir=ihd_cfg["manual_dir"] or None,
            strict_counts=ihd_cfg["strict_counts"],
        )
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


def _check_process(batch_size: int, process_index: int, process_count: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index} of {process_count}")


def steps_per_epoch(data_cfg, batch_size: int, *, process_count: int = 1) -> int:
    """Training steps per epoch: ``len(train) // (batch_size * process_count)``.

    "train" is the training split minus "val" (see ``load_source``). ``batch_size`` is the
    per-process batch, as in ``train_batches``; with one process it is the global batch.
    """
    _check_process(batch_size, 0, process_count)
    global_batch = batch_size * process_count
    num_train = len(load_source(data_cfg, "train"))
    steps = num_train // global_batch
    if steps < 1:
        raise ValueError(
            f"the training split has {num_train} examples (data.validation_fraction="
            f"{data_cfg['validation_fraction']} of the prepared ones are held out for 'val'), fewer "
            f"than one global batch of {global_batch}; lower the batch size or add data"
        )
    return steps


def _stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    # C-contiguous (np.stack keeps the rows' strided layout), so Grain workers pass it through
    # shared memory instead of pickling it.
    out = np.empty((len(arrays), *arrays[0].shape), arrays[0].dtype)
    for i, array in enumerate(arrays):
        out[i] = array
    return out


def _collate(examples: Sequence[dict]) -> dict:
    batch = {k: _stack([ex[k] for ex in examples]) for k in ("image", "mask", "real")}
    for key in ("subset", "name"):
        batch[key] = np.array([ex[key] for ex in examples], dtype=str)
    if "valid" in examples[0]:
        batch["valid"] = np.array([ex["valid"] for ex in examples], dtype=bool)
    return batch


class _TrainExample:
    """Maps a process-local slot (step * B + row) to its augmented example."""

    def __init__(self, source, *, seed, batch_size, process_index, process_count, aug):
        self.source = source
        self.seed = int(seed)
        self.batch_size = batch_size
        self.offset = process_index * batch_size
        self.global_batch = batch_size * process_count
        self.num_examples = len(source)
        self.steps_per_epoch = self.num_examples // self.global_batch
        self.aug = aug
        self._perms: dict[int, np.ndarray] = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_perms"] = {}
        return state

    def permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, 0, epoch]).permutation(self.num_examples)
            self._perms = {epoch: perm}  # Epochs are read in order; keep only the current one.
        return perm

    def source_index(self, slot: int) -> tuple[int, int]:
        """(epoch, source index) of a slot."""
        step, row = divmod(slot, self.batch_size)
        epoch, step_in_epoch = divmod(step, self.steps_per_epoch)
        position = step_in_epoch * self.global_batch + self.offset + row
        return epoch, int(self.permutation(epoch)[position])

    def __call__(self, slot: int) -> dict:
        epoch, index = self.source_index(slot)
        rng = np.random.default_rng([self.seed, 1, epoch, index])
        return transforms.train_transform(self.source[index], rng, self.aug)


class _EvalExample:
    """Maps a process-local slot to its resized example, or to padding past the end."""

    def __init__(self, source, *, batch_size, process_index, process_count, aug):
        self.source = source
        self.batch_size = batch_size
        self.offset = process_index * batch_size
        self.global_batch = batch_size * process_count
        self.aug = aug

    def source_index(self, slot: int) -> int:
        step, row = divmod(slot, self.batch_size)
        return step * self.global_batch + self.offset + row

    def __call__(self, slot: int) -> dict:
        index = self.source_index(slot)
        if index < len(self.source):
            example = transforms.eval_transform(self.source[index], self.aug)
            example["valid"] = True
        else:
            example = transforms.padding_example(self.aug)
            example["valid"] = False
        return example


def _grain_reads_unparsed_flags_safely() -> None:
    """Lets Grain start worker processes when absl flags are unparsed (outside ``absl.app``).

    Grain <= 0.2.18 reads ``--grain_enable_multiprocess_worker_profiling`` with ``FlagHolder.value``
    in the parent process when it starts its workers (``profiler.is_worker_profiling_enabled``),
    which raises ``UnparsedFlagAccessError`` unless flags were parsed; the workers themselves read
    flags only through ``config.get_or_default`` (or after setting them). This wraps that one
    function to use the flag's default while flags are unparsed, as Grain does since
    google/grain#1362, instead of marking the caller's flags as parsed. Idempotent; parsed flags
    are read as before.
    """
    try:
        from grain._src.core import profiler
    except ImportError:  # Grain reorganised: nothing to patch.
        return
    check = getattr(profiler, "is_worker_profiling_enabled", None)
    if check is None or getattr(check, "_jirl_unparsed_safe", False):
        return

    def is_worker_profiling_enabled() -> bool:
        try:
            return check()
        except flags.UnparsedFlagAccessError:
            return bool(flags.FLAGS["grain_enable_multiprocess_worker_profiling"].default)

    is_worker_profiling_enabled._jirl_unparsed_safe = True
    profiler.is_worker_profiling_enabled = is_worker_profiling_enabled


def _iterate(dataset: grain.MapDataset, data_cfg) -> Iterator[dict]:
    num_workers = int(data_cfg["num_workers"])
    prefetch = int(data_cfg["prefetch_batches"])
    if num_workers <= 0:
        read_options = grain.ReadOptions(
            num_threads=int(data_cfg["num_threads"]), prefetch_buffer_size=prefetch
        )
        return iter(dataset.to_iter_dataset(read_options))
    _grain_reads_unparsed_flags_safely()
    # Each worker process produces whole batches (no threads of its own); Grain interleaves them
    # back in order, so the stream equals the in-process one.
    iter_ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    options = grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=max(1, prefetch))
    return iter(iter_ds.mp_prefetch(options))


def train_batches(
    data_cfg,
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict]:
    """Endless augmented training batches of ``batch_size`` (per process) from step ``start_step``.

    Deterministic from ``seed`` (see the module doc); ``start_step=s`` yields exactly what an
    uninterrupted iterator yields from its s-th batch on, without replaying the earlier ones.
    """
    _check_process(batch_size, process_index, process_count)
    if start_step < 0 or seed < 0:
        raise ValueError(f"start_step and seed must be >= 0, got {start_step} and {seed}")
    steps_per_epoch(data_cfg, batch_size, process_count=process_count)  # Validates the size.
    example_fn = _TrainExample(
        load_source(data_cfg, "train"),
        seed=seed,
        batch_size=batch_size,
        process_index=process_index,
        process_count=process_count,
        aug=transforms.AugmentConfig.from_data_config(data_cfg),
    )
    slots = grain.MapDataset.range(start_step * batch_size, _ENDLESS_STEPS * batch_size)
    dataset = slots.map(example_fn).batch(batch_size, drop_remainder=True, batch_fn=_collate)
    return _iterate(dataset, data_cfg)


def num_eval_batches(data_cfg, split: str, *, batch_size: int, process_count: int = 1) -> int:
    """Batches per process in ``eval_batches``: ceil(examples / (batch_size * process_count))."""
    _check_process(batch_size, 0, process_count)
    return math.ceil(len(load_source(data_cfg, split)) / (batch_size * process_count))


def eval_batches(
    data_cfg,
    split: str,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict]:
    """One pass over ``split`` ("train", "val" or "test") in fixed order, resized, no augmentation.

    Every process yields the same number of batches of exactly ``batch_size``; rows past the end of
    the data are zero padding with ``valid=False``. Process ``p`` reads rows ``[p*B, (p+1)*B)`` of
    each global batch of ``B * process_count`` consecutive examples.
    """
    _check_process(batch_size, process_index, process_count)
    source = load_source(data_cfg, split)
    global_batch = batch_size * process_count
    num_batches = math.ceil(len(source) / global_batch)
    example_fn = _EvalExample(
        source,
        batch_size=batch_size,
        process_index=process_index,
        process_count=process_count,
        aug=transforms.AugmentConfig.from_data_config(data_cfg),
    )
    slots = grain.MapDataset.range(0, num_batches * batch_size)
    dataset = slots.map(example_fn).batch(batch_size, drop_remainder=True, batch_fn=_collate)
    return _iterate(dataset, data_cfg)

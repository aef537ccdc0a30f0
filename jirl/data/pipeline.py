"""The input pipeline: TFDS ArrayRecord data sources read through ``grain.MapDataset``.

Batches are dicts of numpy arrays (host side):

* ``image``: float32 [B, crop, crop, 3], the composite normalized with ``mean``/``std``;
* ``mask``: float32 [B, crop, crop, 1] in {0, 1};
* ``real``: float32 [B, crop, crop, 3], normalized like ``image``;
* ``subset``, ``name``: numpy str arrays [B];
* eval batches only: ``valid`` bool [B], False on padding rows of the last batch.

Splits: "train" and "test" as prepared, except that "val" (``data.validation_fraction`` of the
prepared train split, whole real-image groups chosen by ``data.validation_seed``, see
``jirl.data.splits``, read by ``jirl.data.sources``) is taken out of "train". The config is
checked by ``jirl.data.schema.validate_data_config`` on every entry point; nothing is defaulted
here (configs/default.py ``data_config()`` has the keys).

Training order. Let ``N`` be the number of training examples, ``B`` the per-process batch size,
``n`` the process count and ``G = B * n`` the global batch. Epoch ``e`` is the permutation
``default_rng([seed, 0, e]).permutation(N)``; its first ``steps_per_epoch * G`` entries form the
epoch's global batches (remainder dropped), and process ``p`` reads rows ``[p*B, (p+1)*B)`` of
each. Example ``i`` is augmented with ``default_rng([seed, 1, e, i])``. So every batch is a pure
function of (seed, step, process), which makes ``start_step`` resumption free and results
independent of the number of workers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import grain
import numpy as np

from jirl.data import grain_compat, transforms
from jirl.data.sources import load_source

# Training iterators are endless in practice: 2**40 steps.
_ENDLESS_STEPS = 2**40


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


def _iterate(dataset: grain.MapDataset, data_cfg) -> Iterator[dict]:
    num_workers = int(data_cfg["num_workers"])
    prefetch = int(data_cfg["prefetch_batches"])
    if num_workers <= 0:
        read_options = grain.ReadOptions(
            num_threads=int(data_cfg["num_threads"]), prefetch_buffer_size=prefetch
        )
        return iter(dataset.to_iter_dataset(read_options))
    grain_compat.reads_unparsed_flags_safely()
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

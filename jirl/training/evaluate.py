"""Evaluation over a whole split: per scored mask or image (a localizer's AP / F1 / IoU, a
harmonizer's MSE / PSNR / fMSE), overall and per sub-dataset (and foreground-ratio bin)."""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec
from tqdm import tqdm

from jirl import data as jdata
from jirl import metrics, visualize
from jirl.training import baselines as jbase
from jirl.training import mesh as jmesh


def _gather(x: np.ndarray) -> np.ndarray:
    """Concatenates a per-process array over all processes (identity with one process)."""
    if jax.process_count() == 1:
        return x
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _to_host(x: jax.Array) -> np.ndarray:
    """A (possibly multi-process) global array as one numpy array on every host."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _local_rows(x: jax.Array, mesh: jax.sharding.Mesh) -> np.ndarray:
    """This process's rows of a batch-sharded global array: the rows its input batch held."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    local = multihost_utils.global_array_to_host_local_array(x, mesh, PartitionSpec(jmesh.DATA_AXIS))
    return np.asarray(local)


def _gather_strings(names: np.ndarray, width: int = 256) -> np.ndarray:
    if jax.process_count() == 1:
        return names
    codes = np.zeros((len(names), width), np.uint8)
    for i, n in enumerate(names):
        b = str(n).encode()[:width]
        codes[i, :len(b)] = np.frombuffer(b, np.uint8)
    codes = _gather(codes)
    return np.array([bytes(c).rstrip(b"\0").decode() for c in codes])


def _save_png(path: str, image: np.ndarray) -> None:
    """Writes a [H, W, 1] probability mask or a [H, W, 3] image in [0, 1] as an 8-bit PNG, atomically."""
    pixels = np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)
    visualize.save_png(path, pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def _save_masks(directory: str, masks: np.ndarray, names: np.ndarray, valid: np.ndarray) -> None:
    """Writes `masks[i]` (a mask or an image) as `<directory>/<stem of names[i]>.png` for every
    valid row."""
    for i in np.flatnonzero(valid):
        stem = os.path.splitext(os.path.basename(str(names[i])))[0]
        _save_png(os.path.join(directory, stem + ".png"), masks[i])


def evaluate(
    config: ml_collections.ConfigDict,
    eval_step: Callable,
    variables: dict,
    mesh: jax.sharding.Mesh,
    *,
    split: str | None = None,
    mask_dir: str | None = None,
    baselines: jbase.Baselines | None = None,
    progress: bool = True,
) -> dict[str, dict[str, dict[str, float]]]:
    """Scores every mask (a harmonizer: image) the model outputs on `split`, and with
    `baselines` the trivial masks.

    Returns {mask name: {"all": {"ap", "f1", "iou", "count"}, <sub-dataset>: {...}}}, with the
    rows `baseline/mean_mask` and `baseline/all_foreground` after the model's masks when
    `baselines` is given (see jirl.training.baselines). With `mask_dir`, writes each predicted
    mask as `<mask_dir>/<mask name>/<example name>.png` (each process writes the examples it
    read, so a multi-process run writes every mask once), and so the model's pictures that are
    not scored (`ModelSpec.eval_images`, e.g. MadisNet's mapped image as `retouched/`).
    A harmonizer's rows hold {"mse", "psnr", "fmse", "fg_ratio", "count"}, with the groups
    `metrics.FG_RATIO_BINS` after the sub-datasets; its images are written as `<name>/`.
    """
    split = split or config.eval.split
    global_batch = config.eval.batch_size
    jmesh.check_batch_size(global_batch, mesh)
    local_batch = global_batch // jax.process_count()
    batches = jdata.eval_batches(
        config.data, split, batch_size=local_batch,
        process_index=jax.process_index(), process_count=jax.process_count())
    accumulators: dict[str, metrics.StreamingMetrics] = {}
    seen = 0
    limit = config.eval.max_examples
    total = jdata.num_eval_batches(config.data, split, batch_size=local_batch,
                                   process_count=jax.process_count())
    bar = tqdm(batches, total=total, desc=f"eval {split}", unit="batch", leave=False,
               disable=not progress or jax.process_index() != 0)
    for batch in bar:
        per_image, masks = eval_step(variables, jmesh.put_batch(batch, mesh))
        valid = _gather(np.asarray(batch["valid"], bool))
        subsets = _gather_strings(np.asarray(batch["subset"]))
        names = np.asarray(batch["name"])
        per_image = {name: {k: _to_host(v) for k, v in values.items()}
                     for name, values in per_image.items()}
        if baselines is not None:
            scores = jbase.score(baselines, batch["mask"], batch["valid"], config.eval.normalize)
            per_image.update({name: {k: _gather(v) for k, v in values.items()}
                              for name, values in scores.items()})
        for mask_name, host in per_image.items():
            acc = accumulators.setdefault(mask_name, metrics.StreamingMetrics())
            bins = metrics.fg_ratio_bin(host["fg_ratio"]) if "fg_ratio" in host else None
            acc.update(host, subsets, valid, bins=bins)
            if mask_dir and mask_name in masks:
                _save_masks(os.path.join(mask_dir, mask_name), _local_rows(masks[mask_name], mesh),
                            names, np.asarray(batch["valid"], bool))
        for image_name in (set(masks) - set(per_image)) if mask_dir else ():
            _save_masks(os.path.join(mask_dir, image_name), _local_rows(masks[image_name], mesh),
                        names, np.asarray(batch["valid"], bool))
        seen += int(valid.sum())
        if 0 < limit <= seen:
            break
    # The model's rows first, then the baselines' (jit returns dicts sorted by key).
    return {name: accumulators[name].result()
            for name in sorted(accumulators, key=lambda n: n.startswith("baseline/"))}


def format_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """A fixed-width table: one row per (mask or image, group), one column per metric."""
    width = max([10] + [len(name) for name in results])
    keys = next(iter(next(iter(results.values())).values()))
    columns = [k for k in COLUMN_TITLES if k in keys] + sorted(
        k for k in keys if k not in COLUMN_TITLES and k != "count")
    lines = [f"{'mask':<{width}} {'subset':<16} {'n':>6} "
             + " ".join(f"{COLUMN_TITLES.get(k, k):>9}" for k in columns)]
    for mask_name, groups in results.items():
        for g in metrics.group_order(groups):
            r = groups[g]
            lines.append(f"{mask_name:<{width}} {g:<16} {int(r['count']):>6} "
                         + " ".join(f"{r[k]:>9.4f}" for k in columns))
    return "\n".join(lines)


# The table's columns, in this order, and their titles.
COLUMN_TITLES = {"ap": "AP", "f1": "F1", "iou": "IoU", "mse": "MSE", "psnr": "PSNR",
                 "fmse": "fMSE", "fg_ratio": "fg ratio"}


def sample_triplets(
    config: ml_collections.ConfigDict,
    eval_step: Callable,
    variables: dict,
    mesh: jax.sharding.Mesh,
    *,
    split: str,
    output_name: str,
    count: int = 4,
) -> np.ndarray:
    """[n, H, 3 W, 3] images in [0, 1] of the first `count` examples of `split` (0 <= n <= count,
    this process's rows), for TensorBoard: a localizer's composite | ground-truth mask | predicted
    mask `output_name`, a harmonizer's composite | harmonized `output_name` | real image. Every
    process must call it (the eval step is a collective)."""
    local_batch = config.eval.batch_size // jax.process_count()
    batch = next(iter(jdata.eval_batches(
        config.data, split, batch_size=local_batch, process_index=jax.process_index(),
        process_count=jax.process_count())))
    _, outputs = eval_step(variables, jmesh.put_batch(batch, mesh))
    output = _local_rows(outputs[output_name], mesh)
    mean = np.asarray(config.data.mean, np.float32)
    std = np.asarray(config.data.std, np.float32)
    composite = batch["image"] * std + mean
    if output.shape[-1] == 1:  # a mask: shown beside the ground truth
        middle, right = np.repeat(batch["mask"], 3, -1), np.repeat(output, 3, -1)
    else:
        middle, right = output, batch["real"] * std + mean
    rows = np.flatnonzero(batch["valid"])[:count]  # none when this process got only padding
    triplets = np.concatenate([composite, middle, right], axis=2)[rows].clip(0, 1)
    return triplets.astype(np.float32)


def off_centre_sheet(
    config: ml_collections.ConfigDict,
    eval_step: Callable,
    variables: dict,
    mesh: jax.sharding.Mesh,
    *,
    split: str,
    mask_name: str,
    count: int = 8,
    min_offset: float = 0.25,
    min_tile: int = 128,
) -> np.ndarray:
    """A contact sheet (composite | ground truth | prediction) of the first `count` examples of
    `split` whose region's centre of mass lies at least `min_offset` image sides from the image
    centre: where a model that learned a central prior fails. Small images are enlarged an
    integer number of times to tiles of at least `min_tile` pixels. One process only."""
    if jax.process_count() > 1:
        raise ValueError("the contact sheet is drawn by a single process; run eval.py without "
                         "--contact_sheet on several hosts")
    batch_size = config.eval.batch_size
    chosen: dict[str, list] = {"image": [], "mask": []}
    for batch in jdata.eval_batches(config.data, split, batch_size=batch_size):
        for i in np.flatnonzero(batch["valid"]):
            if visualize.region_offset(batch["mask"][i]) >= min_offset:
                chosen["image"].append(batch["image"][i])
                chosen["mask"].append(batch["mask"][i])
        if len(chosen["image"]) >= count:
            break
    if not chosen["image"]:
        raise ValueError(f"no example of '{split}' has its region >= {min_offset} from the centre")
    images = np.stack(chosen["image"][:count])
    gts = np.stack(chosen["mask"][:count])
    preds = []
    for start in range(0, len(images), batch_size):
        n = min(batch_size, len(images) - start)
        pad = batch_size - n
        batch = {"image": np.pad(images[start:start + n], ((0, pad), (0, 0), (0, 0), (0, 0))),
                 "mask": np.pad(gts[start:start + n], ((0, pad), (0, 0), (0, 0), (0, 0))),
                 "valid": np.arange(batch_size) < n}
        _, masks = eval_step(variables, jmesh.put_batch(batch, mesh))
        preds.append(_to_host(masks[mask_name])[:n])
    mean = np.asarray(config.data.mean, np.float32)
    std = np.asarray(config.data.std, np.float32)
    rows = [(img * std + mean, gt, pred)
            for img, gt, pred in zip(images, gts, np.concatenate(preds), strict=True)]
    return visualize.contact_sheet(rows, scale=max(1, -(-min_tile // images.shape[1])))

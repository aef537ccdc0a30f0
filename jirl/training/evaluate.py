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
from jirl import files, metrics, visualize
from jirl.models import build_model, init_model_variables
from jirl.normalization import denormalize
from jirl.runtime import checkpoints as ckpt
from jirl.runtime import mesh as jmesh
from jirl.training import baselines as jbase
from jirl.training.recipe import check_real_images


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
    columns = [k for k in metrics.TITLES if k in keys] + sorted(
        k for k in keys if k not in metrics.TITLES and k != "count")
    lines = [f"{'mask':<{width}} {'subset':<16} {'n':>6} "
             + " ".join(f"{metrics.TITLES.get(k, k):>9}" for k in columns)]
    for mask_name, groups in results.items():
        for g in metrics.group_order(groups):
            r = groups[g]
            lines.append(f"{mask_name:<{width}} {g:<16} {int(r['count']):>6} "
                         + " ".join(f"{r[k]:>9.4f}" for k in columns))
    return "\n".join(lines)



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
    composite = denormalize(batch["image"], config.data.mean, config.data.std)
    if output.shape[-1] == 1:  # a mask: shown beside the ground truth
        middle, right = np.repeat(batch["mask"], 3, -1), np.repeat(output, 3, -1)
    else:
        middle, right = output, denormalize(batch["real"], config.data.mean, config.data.std)
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
    rows = [(denormalize(img, config.data.mean, config.data.std), gt, pred)
            for img, gt, pred in zip(images, gts, np.concatenate(preds), strict=True)]
    return visualize.contact_sheet(rows, scale=max(1, -(-min_tile // images.shape[1])))


CONTACT_SHEET = "contact_sheet.png"


def evaluate_checkpoint(
    config: ml_collections.ConfigDict,
    checkpoint: str,
    *,
    split: str | None = None,
    output_dir: str | None = None,
    save_outputs: bool = False,
    contact_sheet: int = 0,
    progress: bool = True,
) -> dict:
    """Scores the checkpoint at `checkpoint` (a step, checkpoint or workdir directory; a workdir's
    best is preferred) on `split` (default `config.eval.split`), overall and per sub-dataset,
    beside the trivial baselines (`config.eval.baselines`), on every device of every process.

    With `output_dir`: `save_outputs` writes the model's outputs per example under
    `<output_dir>/<task.outputs>/<name>/` (masks, or a harmonizer's images), and `contact_sheet`
    > 0 draws that many off-centre examples to `<output_dir>/contact_sheet.png` (a localizer's;
    one process). Returns what eval.json holds: the checkpoint, split, model, task, primary mask,
    the scores (`evaluate`), the task's protocol and the mean mask's summary. Raises
    CheckpointError for a checkpoint that is missing or of another model.
    """
    spec, model = build_model(config)
    if (save_outputs or contact_sheet > 0) and not output_dir:
        raise ValueError("save_outputs and contact_sheet write into output_dir: pass one")
    if contact_sheet > 0 and spec.task.outputs != "masks":
        raise ValueError(f"a contact sheet shows masks; {config.model.name} is a "
                         f"{spec.task.name} model (save its {spec.task.outputs} instead)")
    if contact_sheet > 0 and jax.process_count() > 1:
        raise ValueError("the contact sheet is drawn by a single process; evaluate on one host "
                         "to draw it")
    split = split or config.eval.split
    check_real_images(spec, config, split)
    mesh = jmesh.make_mesh()
    target = jax.eval_shape(lambda: init_model_variables(config, model))
    variables, step_dir = ckpt.restore(checkpoint, target, mesh=mesh, model_cfg=config.model)
    eval_step = jax.jit(spec.task.make_eval_step(spec, config, model.apply))
    base = (jbase.mean_training_mask(config.data, config.eval.prior_examples)
            if config.eval.baselines and spec.task.mask_baselines else None)
    outputs_dir = os.path.join(output_dir, spec.task.outputs) if save_outputs else None
    results = evaluate(config, eval_step, variables, mesh, split=split, mask_dir=outputs_dir,
                       baselines=base, progress=progress)
    payload = {"checkpoint": step_dir, "split": split, "model": config.model.name,
               "task": spec.task.name, "primary_mask": spec.primary_mask, "results": results,
               **spec.task.protocol(config)}
    if base is not None:
        payload["mean_mask"] = base.summary()
    if contact_sheet > 0:
        sheet = off_centre_sheet(config, eval_step, variables, mesh, split=split,
                                 mask_name=spec.primary_mask, count=contact_sheet)
        payload["contact_sheet"] = str(files.path(output_dir) / CONTACT_SHEET)
        visualize.save_png(payload["contact_sheet"], sheet)
    return payload

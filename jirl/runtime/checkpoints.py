"""Orbax checkpoints: the layout every jirl model shares.

<workdir>/checkpoints/<step>/   the latest checkpoints (auto-resume reads the newest)
<workdir>/best/<step>/          the best one by validation IoU (a harmonizer: PSNR)
Each step directory holds three items:
  model  {"params", "batch_stats"}    everything inference needs (also what the importer writes)
  train  {"step", "opt_state"}        what exact resume needs in addition
  meta   JSON: step, model name, config, best metric, data-iterator position
Orbax writes into a temporary directory and renames it when complete, so an interrupted save
never shadows the previous good checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from jirl.runtime import mesh as jmesh

log = logging.getLogger(__name__)

LATEST_DIR = "checkpoints"
BEST_DIR = "best"
UNREADABLE_DIR = "checkpoints.unreadable"


class _DropItemMetadataWarning(logging.Filter):
    """Drops Orbax's warning that an item directory has no step-level `_CHECKPOINT_METADATA`.

    `restore_model` reads the `model` item of a step directory directly (a StandardCheckpointer
    on `<step>/model`); that file lives one level up, so the warning is expected, not a problem.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Metadata file does not exist")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the configured model."""


def _manager(directory: str, max_to_keep: int, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=not read_only, read_only=read_only)
    return ocp.CheckpointManager(
        os.path.abspath(directory), options=options,
        item_names=("model", "train", "meta"),
    )


def replicated_target(tree: Any, mesh: Mesh | None = None) -> Any:
    """Restore targets for `tree` (arrays or ShapeDtypeStructs): every leaf replicated over `mesh`.

    Params, BN statistics and optimizer state are replicated on every device of the data mesh, so
    they restore straight onto it, on one device or many, in one process or several (each process
    reads what its devices hold), whatever topology wrote the checkpoint. `mesh` defaults to the
    mesh over all devices that training and evaluation use (`jirl.runtime.mesh.make_mesh`).
    """
    sharding = jmesh.replicated(jmesh.make_mesh() if mesh is None else mesh)

    def leaf(x):
        x = x if hasattr(x, "shape") else jnp.asarray(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    return jax.tree.map(leaf, tree)


def save(manager: ocp.CheckpointManager, step: int, model: dict, train: dict | None,
         meta: dict) -> None:
    """Saves the items of one checkpoint (asynchronously; `wait` before exiting)."""
    items = {"model": ocp.args.StandardSave(model), "meta": ocp.args.JsonSave(meta)}
    if train is not None:
        items["train"] = ocp.args.StandardSave(train)
    manager.save(step, args=ocp.args.Composite(**items), force=True)


def write_model_checkpoint(directory: str, model: dict, meta: dict, step: int = 0) -> str:
    """Writes a standalone inference checkpoint (items `model` and `meta`) and returns its path."""
    manager = _manager(directory, max_to_keep=1)
    save(manager, step, model, None, meta)
    manager.wait_until_finished()
    manager.close()
    return os.path.join(os.path.abspath(directory), str(step))


class Checkpointer:
    """Latest + best checkpoints of one training run in `workdir`."""

    def __init__(self, workdir: str, max_to_keep: int = 2):
        self.workdir = os.path.abspath(workdir)
        self._unreadable: set[int] = set()  # steps restore_latest skipped
        self.latest = _manager(os.path.join(workdir, LATEST_DIR), max_to_keep)
        self.best = _manager(os.path.join(workdir, BEST_DIR), 1)

    def save_latest(self, step: int, model: dict, train: dict, meta: dict) -> None:
        if step in self._unreadable:
            self._set_aside(step)
        save(self.latest, step, model, train, meta)

    def save_best(self, step: int, model: dict, meta: dict) -> None:
        save(self.best, step, model, None, meta)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore_latest(self, model_target: dict, train_target: dict, mesh: Mesh | None = None
                       ) -> tuple[dict, dict, dict] | None:
        """(model, train, meta) of the newest readable checkpoint, or None when there is none.

        Arrays come back replicated over `mesh` (see `replicated_target`). A checkpoint that fails
        to restore is skipped, with a warning, in favour of an older one. When checkpoints exist
        but none is readable, raises CheckpointError instead of silently starting over (that is a
        changed model config or a bug, not an interrupted save).
        """
        # built outside the try: a bad target is a bug to raise, not an unreadable checkpoint
        args = ocp.args.Composite(
            model=ocp.args.StandardRestore(replicated_target(model_target, mesh)),
            train=ocp.args.StandardRestore(replicated_target(train_target, mesh)),
            meta=ocp.args.JsonRestore(),
        )
        errors = []
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                restored = self.latest.restore(step, args=args)
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped
                log.warning("skipping unreadable checkpoint %s/%d: %s", LATEST_DIR, step, e)
                self._unreadable.add(step)
                errors.append(f"  {LATEST_DIR}/{step}: {str(e).splitlines()[0][:300]}")
                continue
            return restored["model"], restored["train"], restored["meta"]
        if errors:
            raise CheckpointError(
                f"no readable checkpoint in {self.workdir}/{LATEST_DIR}:\n" + "\n".join(errors)
                + "\nif the model config changed, use a new workdir (--config.init_from=<a "
                "checkpoint> to start from its weights)")
        return None

    def _set_aside(self, step: int) -> None:
        """Moves the unreadable <step> directory to <workdir>/checkpoints.unreadable/<step>-<time>.

        Done only when the resumed run saves that step again: Orbax refuses to save over an
        existing step, and the directory is kept for inspection rather than deleted.
        """
        if jax.process_index() == 0:
            src = os.path.join(self.workdir, LATEST_DIR, str(step))
            dst = os.path.join(self.workdir, UNREADABLE_DIR, f"{step}-{int(time.time())}")
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.rename(src, dst)
            log.warning("moved unreadable checkpoint %s to %s", src, dst)
        self._unreadable.discard(step)
        self.latest.reload()

    def wait(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.latest.close()
        self.best.close()


def resolve_checkpoint(path: str) -> str:
    """A step directory from a step directory, a manager directory (newest step) or a workdir.

    For a workdir, the best checkpoint is preferred over the latest one.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if os.path.isdir(os.path.join(path, "model")):
        return path
    for sub in ("", BEST_DIR, LATEST_DIR):
        d = os.path.join(path, sub)
        steps = [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []
        steps = [s for s in steps if os.path.isdir(os.path.join(d, str(s), "model"))]
        if steps:
            return os.path.join(d, str(max(steps)))
    raise CheckpointError(
        f"no checkpoint found in {path}: expected a step directory with a 'model' item, a "
        f"checkpoint directory, or a workdir with '{BEST_DIR}/' or '{LATEST_DIR}/'")


def read_meta(step_dir: str) -> dict:
    """The `meta` item of a step directory ({} when absent)."""
    for name in ("metadata", "meta"):
        f = os.path.join(step_dir, "meta", name)
        if os.path.isfile(f):
            with open(f, encoding="utf-8") as fh:
                return json.load(fh)
    return {}


def stored_config(step_dir: str) -> ml_collections.ConfigDict:
    """The config a checkpoint's meta records (train and `python -m jirl.convert` write it), as an
    unlocked ConfigDict; CheckpointError when the meta has none."""
    config = read_meta(step_dir).get("config")
    if not config:
        raise CheckpointError(
            f"checkpoint {step_dir} records no config in its meta; pass the config it was "
            "trained with (config=..., or --config on the command line)")
    return ml_collections.ConfigDict(config)


def checkpoint_workdir(step_dir: str) -> str:
    """The run directory of a step directory: <workdir> for <workdir>/checkpoints/<step> and
    <workdir>/best/<step>, else the directory that holds the step (a converted checkpoint's)."""
    parent = os.path.dirname(os.path.abspath(step_dir))
    if os.path.basename(parent) in (LATEST_DIR, BEST_DIR):
        return os.path.dirname(parent)
    return parent


def check_model_name(meta: dict, model_name: str | None, where: str) -> None:
    """Raises CheckpointError when the checkpoint's meta names another model than the config."""
    stored = meta.get("model")
    if model_name and stored and stored != model_name:
        raise CheckpointError(
            f"checkpoint {where} is a {stored} checkpoint; the config builds {model_name}: pass "
            f"the config it was trained with (e.g. --config configs/{stored}.py) or a {model_name} "
            f"checkpoint")


def _config_differences(meta: dict, model_cfg: Any) -> list[str]:
    """`config.model` keys whose value differs between the checkpoint's meta and `model_cfg`."""
    stored = (meta.get("config") or {}).get("model") or {}
    if not stored or model_cfg is None:
        return []
    now = json.loads(model_cfg.to_json_best_effort()) if hasattr(model_cfg, "to_json_best_effort") \
        else dict(model_cfg)
    return [f"  config.model.{k}: checkpoint {stored.get(k)!r} vs config {now.get(k)!r}"
            for k in sorted(set(stored) | set(now)) if stored.get(k) != now.get(k)]


def restore_model(path: str, target: dict, *, mesh: Mesh | None = None,
                  model_cfg: Any = None) -> dict:
    """Restores {"params", "batch_stats"} from `path` shaped like `target`, replicated over `mesh`.

    The one restore path of train.py (`init_from`), eval.py, the converters' round trips and
    inference: variables land on every device of `mesh` (default: all devices), ready for a
    jitted step whose batch is sharded over that mesh. `model_cfg` (the configured
    `config.model`) lets the errors name the model and the settings the checkpoint was made
    with. Raises CheckpointError when the checkpoint is of another model, or lists missing /
    unexpected / mis-shaped entries when it does not fit the configured model.
    """
    step_dir = resolve_checkpoint(path)
    meta = read_meta(step_dir)
    if model_cfg is not None:
        check_model_name(meta, model_cfg.get("name"), step_dir)
    ckptr = ocp.StandardCheckpointer()
    quiet = _DropItemMetadataWarning()
    logging.getLogger("absl").addFilter(quiet)
    try:
        stored = ckptr.metadata(os.path.join(step_dir, "model"))
        stored_tree = getattr(stored, "item_metadata", stored)
        stored_tree = getattr(stored_tree, "tree", stored_tree)
        check_tree_matches(stored_tree, target, step_dir, _config_differences(meta, model_cfg))
        return ckptr.restore(os.path.join(step_dir, "model"), replicated_target(target, mesh))
    finally:
        ckptr.close()
        logging.getLogger("absl").removeFilter(quiet)


def _flat(tree: Any) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(k): tuple(getattr(v, "shape", ())) for k, v in flat}


def check_tree_matches(stored: Any, target: Any, where: str, hints: list[str] | None = None) -> None:
    """Raises CheckpointError naming every missing, unexpected and mis-shaped leaf (and `hints`)."""
    have, want = _flat(stored), _flat(target)
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    shapes = sorted(k for k in set(have) & set(want) if have[k] != want[k])
    if missing or unexpected or shapes:
        lines = [f"checkpoint {where} does not fit the configured model:"]
        lines += [f"  missing: {k}" for k in missing[:20]]
        lines += [f"  unexpected: {k}" for k in unexpected[:20]]
        lines += [f"  shape mismatch: {k}: checkpoint {have[k]} vs model {want[k]}"
                  for k in shapes[:20]]
        if hints:
            lines.append("the checkpoint was made with other model settings:")
            lines += hints
        lines.append("check --config.model.* against the model the checkpoint was trained with")
        raise CheckpointError("\n".join(lines))

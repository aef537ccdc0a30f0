"""Orbax checkpoints: the layout every jirl model shares.

<workdir>/checkpoints/<step>/   the latest checkpoints (auto-resume reads the newest)
<workdir>/best/<step>/          the best one by validation IoU (a harmonizer: PSNR)
Each step directory holds three items:
  model  {"params", "batch_stats"}    everything inference needs (also what the importer writes)
  train  {"step", "opt_state"}        what exact resume needs in addition
  meta   JSON: step, model name, config, best metric, data-iterator position
Orbax writes into a temporary directory and renames it when complete (on an object store such as
gs://, it marks the step complete last), so an interrupted save never shadows the previous good
checkpoint. The meta records a SHA-256 of the model arrays (`model_sha256`), checked with their
finiteness at every restore: a flipped byte is an error, not an empty mask. A resumed run sets
aside whatever any manager holds beyond the step it resumes from (`Checkpointer.reconcile`).
Paths are `etils.epath` paths: the workdir may be local or on an object store (gs://bucket/run).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jirl import files
from jirl.runtime import mesh as jmesh

log = logging.getLogger(__name__)

LATEST_DIR = "checkpoints"
BEST_DIR = "best"
SET_ASIDE_DIR = "set_aside"  # <workdir>/set_aside/<manager>.<step>.<time>: kept, not deleted
SET_ASIDE_README = (
    "Checkpoints a resumed run found beyond the step it resumed from (unreadable, or saved by the\n"
    "interrupted run after its last readable checkpoint), moved here rather than deleted. Named\n"
    "<manager>.<step>.<unix time>; delete them when you no longer need them.\n")
CHECKSUM_KEY = "model_sha256"


class _DropItemMetadataWarning(logging.Filter):
    """Drops Orbax's warnings about an item directory's metadata.

    `restore` reads the `model` item of a step directory directly (a StandardCheckpointer on
    `<step>/model`): the step-level `_CHECKPOINT_METADATA` lives one level up, so that warning is
    expected, and an unreadable item metadata is reported by `restore` itself, in one line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("Metadata file does not exist",
                                               "Failed to get item metadata"))


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not fit the configured model."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint of another model, or of other model settings, than the configured."""


def _manager(directory: epath.Path, max_to_keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(directory, options=options, item_names=("model", "train", "meta"))


def _host_array(leaf: Any) -> np.ndarray:
    """`leaf` on the host: a replicated array spanning several processes is read from the shard
    this process holds (every shard is the whole array)."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        leaf = leaf.addressable_shards[0].data
    return np.asarray(jax.device_get(leaf))


def model_checksum(model: dict) -> str:
    """SHA-256 over every array of `model` (path, dtype, shape and bytes, in tree order)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(model)[0]:
        array = np.ascontiguousarray(_host_array(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}:{array.dtype}:{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def non_finite_entries(tree: Any) -> list[str]:
    """The names of the floating-point arrays of `tree` that hold a NaN or an infinity."""
    bad = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = _host_array(leaf)
        if jnp.issubdtype(array.dtype, jnp.inexact) and not np.isfinite(array).all():
            bad.append(jax.tree_util.keystr(path))
    return bad


def check_finite(tree: Any, where: str) -> None:
    """Raises CheckpointError naming the arrays of `tree` that are not finite."""
    bad = non_finite_entries(tree)
    if bad:
        raise CheckpointError(f"{where}: non-finite values (NaN or inf) in {len(bad)} array(s): "
                              + ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""))


def verify_model(model: dict, meta: dict, where: str) -> None:
    """Raises CheckpointError when `model` holds non-finite values or differs from the checksum
    its meta recorded at save (a corrupt or altered file); checkpoints from before checksums
    are only checked for finiteness."""
    check_finite(model, f"checkpoint {where}")
    recorded = meta.get(CHECKSUM_KEY)
    if recorded and model_checksum(model) != recorded:
        raise CheckpointError(
            f"checkpoint {where}: the model arrays do not match the checksum recorded when it "
            "was saved (a corrupt or altered file)")


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
    """Saves the items of one checkpoint (asynchronously; `wait` before exiting); the meta gets
    the model arrays' checksum."""
    meta = dict(meta, **{CHECKSUM_KEY: model_checksum(model)})
    items = {"model": ocp.args.StandardSave(model), "meta": ocp.args.JsonSave(files.strict(meta))}
    if train is not None:
        items["train"] = ocp.args.StandardSave(train)
    manager.save(step, args=ocp.args.Composite(**items), force=True)


def write_model_checkpoint(directory: str, model: dict, meta: dict, step: int = 0) -> str:
    """Writes a standalone inference checkpoint (items `model` and `meta`) and returns its path;
    refuses non-finite arrays (naming them) rather than writing a checkpoint that predicts NaN."""
    check_finite(model, f"the model for {directory}")
    manager = _manager(files.path(directory), max_to_keep=1)
    save(manager, step, model, None, meta)
    manager.wait_until_finished()
    manager.close()
    return str(files.path(directory) / str(step))


class Checkpointer:
    """Latest + best checkpoints of one training run in `workdir` (local or gs://...)."""

    def __init__(self, workdir: str, max_to_keep: int = 2):
        self.workdir = files.path(workdir)
        self.managers = {LATEST_DIR: _manager(self.workdir / LATEST_DIR, max_to_keep),
                         BEST_DIR: _manager(self.workdir / BEST_DIR, 1)}
        self.latest, self.best = self.managers[LATEST_DIR], self.managers[BEST_DIR]

    def save_latest(self, step: int, model: dict, train: dict, meta: dict) -> None:
        save(self.latest, step, model, train, meta)

    def save_best(self, step: int, model: dict, meta: dict) -> None:
        save(self.best, step, model, None, meta)

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore_latest(self, model_target: dict, train_target: dict, mesh: Mesh | None = None
                       ) -> tuple[dict, dict, dict] | None:
        """(model, train, meta) of the newest readable checkpoint, or None when there is none.

        Arrays come back replicated over `mesh` (see `replicated_target`). A checkpoint that fails
        to restore or to verify (`verify_model`) is skipped, with a warning, in favour of an older
        one. When checkpoints exist but none is readable, raises CheckpointError instead of
        silently starting over (that is a changed model config or a bug, not an interrupted save).
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
                verify_model(restored["model"], restored["meta"] or {}, f"{LATEST_DIR}/{step}")
            except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped
                errors.append(f"  {LATEST_DIR}/{step}: {first_line(e)}")
                log.warning("skipping unreadable checkpoint %s/%d: %s", LATEST_DIR, step,
                            first_line(e))
                continue
            return restored["model"], restored["train"], restored["meta"]
        if errors:
            raise CheckpointError(
                f"no readable checkpoint in {self.workdir}/{LATEST_DIR}:\n" + "\n".join(errors)
                + "\nif the model config changed, use a new workdir (--config.init_from=<a "
                "checkpoint> to start from its weights)")
        return None

    def reconcile(self, step: int) -> list[str]:
        """Sets aside every checkpoint, in every manager, beyond `step` (the step a run resumes
        from; 0 for a fresh start) and returns their names.

        A run killed between two saves of one step (`best/9` written, `checkpoints/9` not), or
        resumed from an older step because the newest is unreadable, would otherwise meet its
        own future: Orbax refuses to save a step that exists. What lies beyond is moved to
        <workdir>/set_aside/<manager>.<step>.<time> (kept for inspection, not deleted) by process
        0, and every process waits for the move before it reloads the managers.
        """
        beyond = [(name, s) for name in self.managers
                  for s in _step_dirs(self.workdir / name) if s > step]
        if jax.process_index() == 0 and beyond:
            folder = self.workdir / SET_ASIDE_DIR
            # a file makes the folder exist on an object store too, where folders are prefixes
            files.write_text(folder / "README.txt", SET_ASIDE_README)
            for name, s in beyond:
                dst = folder / f"{name}.{s}.{int(time.time())}"
                (self.workdir / name / str(s)).rename(dst)
                log.warning("set aside %s/%d (beyond step %d, where the run resumes): %s",
                            name, s, step, dst)
        if beyond:
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("jirl_checkpoints_reconciled")
            for manager in self.managers.values():
                manager.reload()
        return [f"{name}/{s}" for name, s in beyond]

    def wait(self) -> None:
        for manager in self.managers.values():
            manager.wait_until_finished()

    def close(self) -> None:
        self.wait()
        for manager in self.managers.values():
            manager.close()


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an error's message, cut at `limit` characters (TensorStore's errors
    carry a JSON spec of many lines that the user does not need)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: " + (text[0][:limit] if text else "")


def _step_dirs(directory: epath.Path) -> list[int]:
    """The finished steps of a manager directory: numeric names (Orbax's unfinished saves carry
    a suffix), whatever else lies there ignored."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def _finished(step_dir: epath.Path) -> bool:
    """Whether `step_dir` is a complete Orbax save (gs://: its commit marker is there)."""
    return step_dir.name.isdigit() and (step_dir / "model").is_dir() and \
        ocp.step.is_path_finalized(step_dir)


def checkpoint_candidates(path: str) -> list[str]:
    """The step directories `path` names, in the order to try them: a step directory itself; a
    manager directory's steps, newest first; a workdir's best steps, then its latest ones.
    Raises CheckpointError when `path` does not exist or holds no checkpoint."""
    root = files.path(path)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint {root} does not exist")
    if (root / "model").is_dir():
        return [str(root)]
    found = [str(root / sub / str(s)) for sub in ("", BEST_DIR, LATEST_DIR)
             for s in reversed(_step_dirs(root / sub)) if _finished(root / sub / str(s))]
    if not found:
        raise CheckpointError(
            f"no checkpoint found in {root}: expected a step directory with a 'model' item, a "
            f"checkpoint directory, or a workdir with '{BEST_DIR}/' or '{LATEST_DIR}/'")
    return found


def resolve_checkpoint(path: str) -> str:
    """A step directory from a step directory, a manager directory (newest step) or a workdir
    (its best checkpoint preferred over the latest one): `checkpoint_candidates(path)[0]`."""
    return checkpoint_candidates(path)[0]


def read_meta(step_dir: str) -> dict:
    """The `meta` item of a step directory ({} when absent); CheckpointError when unreadable."""
    for name in ("metadata", "meta"):
        f = files.path(step_dir) / "meta" / name
        if f.is_file():
            try:
                return json.loads(f.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise CheckpointError(f"checkpoint {step_dir}: unreadable meta ({e})") from e
    return {}


def stored_config(path: str) -> ml_collections.ConfigDict:
    """The config the checkpoint `path` names records in its meta (train and `python -m
    jirl.convert` write it; the first candidate with a readable one, `checkpoint_candidates`),
    as an unlocked ConfigDict; CheckpointError when none records one."""
    for step_dir in checkpoint_candidates(path):
        try:
            config = read_meta(step_dir).get("config")
        except CheckpointError as e:
            log.warning("%s", first_line(e))
            continue
        if config:
            return ml_collections.ConfigDict(config)
    raise CheckpointError(
        f"checkpoint {path} records no config in its meta; pass the config it was "
        "trained with (config=..., or --config on the command line)")


def checkpoint_workdir(step_dir: str) -> str:
    """The run directory of a step directory: <workdir> for <workdir>/checkpoints/<step> and
    <workdir>/best/<step>, else the directory that holds the step (a converted checkpoint's)."""
    parent = files.path(step_dir).parent
    return str(parent.parent if parent.name in (LATEST_DIR, BEST_DIR) else parent)


def check_model_name(meta: dict, model_name: str | None, where: str) -> None:
    """Raises CheckpointError when the checkpoint's meta names another model than the config."""
    stored = meta.get("model")
    if model_name and stored and stored != model_name:
        raise CheckpointMismatchError(
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


def restore(path: str, target: dict, *, mesh: Mesh | None = None, model_cfg: Any = None
            ) -> tuple[dict, str]:
    """({"params", "batch_stats"} shaped like `target` and replicated over `mesh`, the step
    directory they came from), from the first readable checkpoint `path` names.

    The one restore path of train.py (`init_from`), eval.py, the converters' round trips and
    inference: variables land on every device of `mesh` (default: all devices), ready for a
    jitted step whose batch is sharded over that mesh. A workdir's or manager directory's
    checkpoint that fails to read or to verify (`verify_model`) gives way, with one warning line,
    to the next one (`checkpoint_candidates`); CheckpointError names every one tried when none
    is readable. `model_cfg` (the configured `config.model`) lets the errors name the model and
    the settings the checkpoint was made with: a checkpoint of another model, or one that does
    not fit the configured model (missing / unexpected / mis-shaped entries), is an error at once.
    """
    problems = []
    for step_dir in checkpoint_candidates(path):
        try:
            variables = _restore_step(step_dir, target, mesh, model_cfg)
        except CheckpointMismatchError:
            raise
        except Exception as e:  # noqa: BLE001 - an unreadable checkpoint gives way to the next
            problems.append(f"{step_dir}: {first_line(e)}")
            continue
        if problems:
            log.warning("unreadable checkpoint %s; using %s", "; ".join(problems), step_dir)
        return variables, step_dir
    raise CheckpointError("no readable checkpoint in " + str(path) + ":\n  " + "\n  ".join(problems))


def restore_model(path: str, target: dict, *, mesh: Mesh | None = None,
                  model_cfg: Any = None) -> dict:
    """The variables of `restore(path, target, mesh=mesh, model_cfg=model_cfg)`."""
    return restore(path, target, mesh=mesh, model_cfg=model_cfg)[0]


def _restore_step(step_dir: str, target: dict, mesh: Mesh | None, model_cfg: Any) -> dict:
    """The verified model item of one step directory (see `restore`)."""
    meta = read_meta(step_dir)
    if model_cfg is not None:
        check_model_name(meta, model_cfg.get("name"), step_dir)
    item = files.path(step_dir) / "model"
    ckptr = ocp.StandardCheckpointer()
    quiet = _DropItemMetadataWarning()
    logging.getLogger("absl").addFilter(quiet)
    try:
        stored = ckptr.metadata(item)
        stored_tree = getattr(stored, "item_metadata", stored)
        stored_tree = getattr(stored_tree, "tree", stored_tree)
        if jax.tree.leaves(target) and not jax.tree.leaves(stored_tree):
            raise CheckpointError(f"checkpoint {step_dir}: the model item's metadata is unreadable")
        check_tree_matches(stored_tree, target, step_dir, _config_differences(meta, model_cfg))
        variables = ckptr.restore(item, replicated_target(target, mesh))
    finally:
        ckptr.close()
        logging.getLogger("absl").removeFilter(quiet)
    verify_model(variables, meta, step_dir)
    return variables


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
        raise CheckpointMismatchError("\n".join(lines))

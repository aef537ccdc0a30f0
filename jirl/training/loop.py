"""`train_and_evaluate(config, workdir)`: the training loop every jirl model uses."""

from __future__ import annotations

import contextlib
import json
import signal
import time

import jax
import ml_collections
from jax.experimental import multihost_utils
from tqdm import tqdm

from jirl import data as jdata
from jirl import files
from jirl.models import build_model, init_model_variables
from jirl.runtime import checkpoints as ckpt
from jirl.runtime import mesh as jmesh
from jirl.runtime.pretrained import load_pretrained
from jirl.training import baselines as jbase
from jirl.training.evaluate import evaluate, format_table, sample_triplets
from jirl.training.optim import lr_schedule, make_optimizer
from jirl.training.recipe import check_real_images
from jirl.training.state import TrainState, create_train_state
from jirl.training.steps import compile_step, make_eval_step, make_train_step
from jirl.training.writers import MetricWriter


class NonFiniteLossError(FloatingPointError):
    """Raised when a training step produced a NaN or infinite loss or gradient."""


class Preempted(RuntimeError):
    """Training stopped at a SIGTERM after saving its checkpoint (`train_and_evaluate` with
    `raise_on_preemption`): the run is not finished, and resumes from that checkpoint."""


class Schedule:
    """Step counts derived from the config: total steps and the logging/eval/checkpoint periods."""

    def __init__(self, config: ml_collections.ConfigDict, steps_per_epoch: int):
        self.steps_per_epoch = steps_per_epoch
        self.total = (config.num_train_steps if config.num_train_steps > 0
                      else config.num_epochs * steps_per_epoch)
        self.checkpoint_every = (config.checkpoint_every_steps
                                 if config.checkpoint_every_steps > 0 else steps_per_epoch)
        self.eval_every = (config.eval_every_steps if config.eval_every_steps > 0
                           else config.eval_every_epochs * steps_per_epoch)
        self.log_every = max(1, config.log_every_steps)


class _Preemption:
    """Whether to checkpoint and stop after a step because the job is being preempted (SIGTERM).

    One process: SIGTERM sets a flag the loop reads after each step. Several processes
    (`jax.distributed`): a preemption notice may reach one host before another, and a
    checkpoint is a collective save, so the processes agree on the step with JAX's preemption
    sync (`multihost_utils.reached_preemption_sync_point`, whose service catches SIGTERM in each
    process): all of them save the same step and exit together.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._synced = jax.process_count() > 1

    def __enter__(self):
        if not self._synced:
            with contextlib.suppress(ValueError):  # not in the main thread: no handler
                self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def reached(self, step: int) -> bool:
        """Called after every step, with the same steps in every process."""
        if self._synced:
            self.requested = multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _model_items(state: TrainState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def _train_items(state: TrainState) -> dict:
    return {"step": state.step, "opt_state": state.opt_state}


# The settings a training stream is a pure function of (with the step), as recorded in checkpoints.
STREAM_KEYS = ("seed", "global_batch", "process_count", "source", "validation_fraction",
               "validation_seed")


def data_iterator_state(config: ml_collections.ConfigDict, step: int) -> dict:
    """The training stream's position: its batches are a pure function of these values (the
    validation settings decide which examples are left for training)."""
    return {"seed": int(config.seed), "step": int(step), "global_batch": int(config.batch_size),
            "process_count": jax.process_count(), "source": config.data.source,
            "validation_fraction": float(config.data.validation_fraction),
            "validation_seed": int(config.data.validation_seed)}


def check_resumable_stream(saved: dict | None, config: ml_collections.ConfigDict, step: int) -> None:
    """Raises when a resumed run would not see the batches the interrupted run would have seen."""
    if not saved:
        return
    now = data_iterator_state(config, step)
    changed = {k: (saved.get(k), now[k]) for k in STREAM_KEYS if saved.get(k) != now[k]}
    if changed:
        details = ", ".join(f"{k}: checkpoint {a} vs now {b}" for k, (a, b) in changed.items())
        raise ValueError(
            f"cannot resume exactly: the data stream changed ({details}); restore these "
            f"settings, or start a new workdir with --config.init_from=<this checkpoint>")


def _meta(config, step: int, best: float, extra: dict | None = None) -> dict:
    """Checkpoint metadata; `best` is the best validation score so far (`best_score`, of the
    task's `selection` metric; -1 before the first validation)."""
    return dict({"step": int(step), "model": config.model.name, "best_score": best,
                 "data_iterator": data_iterator_state(config, step),
                 "config": json.loads(config.to_json_best_effort())}, **(extra or {}))


def _initial_state(config: ml_collections.ConfigDict, spec, state: TrainState,
                   checkpointer: ckpt.Checkpointer, mesh) -> tuple[TrainState, float]:
    """(state, best validation score so far): resumed from the workdir's newest checkpoint, else
    initialized from `config.init_from`, else from the model's ImageNet backbone (if configured).

    Every array ends up replicated over `mesh`.
    """
    restored = checkpointer.restore_latest(_model_items(state), _train_items(state), mesh)
    checkpointer.reconcile(0 if restored is None else int(restored[1]["step"]))
    if restored is not None:
        model_items, train_items, meta = restored
        step = int(train_items["step"])
        check_resumable_stream(meta.get("data_iterator"), config, step)
        tqdm.write(f"resumed from {checkpointer.workdir} at step {step}")
        state = state.replace(step=train_items["step"], opt_state=train_items["opt_state"],
                              **model_items)
        best = meta.get("best_score", meta.get("best_iou", -1.0))  # best_iou: before RainNet
        return jax.device_put(state, jmesh.replicated(mesh)), float(best)
    if config.init_from:
        variables = ckpt.restore_model(config.init_from, _model_items(state), mesh=mesh,
                                       model_cfg=config.model)
        tqdm.write(f"initialized params and BN statistics from {config.init_from}")
    else:
        variables = load_pretrained(spec.pretrained, _model_items(state), config.model)
    return jax.device_put(state.replace(**variables), jmesh.replicated(mesh)), -1.0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       raise_on_preemption: bool = False) -> dict:
    """Trains `config.model` on `config.data`, checkpointing into and resuming from `workdir`.

    Validation runs on `config.eval.validation_split` ("val", carved from the training data, by
    default), is logged as `<split>/ap|f1|iou` (a harmonizer: `<split>/mse|psnr|fmse`, with a few
    composite | harmonized | real images in TensorBoard) and picks the best checkpoint by IoU
    (PSNR). Returns the last validation results ({} if validation never ran). A SIGTERM saves
    a checkpoint and returns early, or with `raise_on_preemption` raises `Preempted` (for a
    caller that would otherwise take the run as finished).
    """
    files.path(workdir).mkdir(parents=True, exist_ok=True)
    mesh = jmesh.make_mesh()
    jmesh.check_batch_size(config.batch_size, mesh)
    spec, model = build_model(config)
    check_real_images(spec, config, "train")
    steps_per_epoch = jdata.steps_per_epoch(config.data, config.batch_size)
    sched = Schedule(config, steps_per_epoch)
    tx = make_optimizer(config.optimizer, steps_per_epoch, spec)
    lr_fn = lr_schedule(config.optimizer, steps_per_epoch)
    val_split = config.eval.validation_split

    checkpointer = ckpt.Checkpointer(workdir)
    state = create_train_state(model, tx, init_model_variables(config, model))
    try:
        state, best = _initial_state(config, spec, state, checkpointer, mesh)
    except BaseException:
        checkpointer.close()
        raise
    repl = jmesh.replicated(mesh)
    train_step = jax.jit(make_train_step(spec, config), donate_argnums=0,
                         out_shardings=(repl, repl))
    eval_step = jax.jit(make_eval_step(spec, config, model.apply))
    # The trivial baselines are printed beside every validation (their scores do not change).
    base = (jbase.mean_training_mask(config.data, config.eval.prior_examples)
            if config.eval.baselines and spec.task.mask_baselines else None)
    selection = spec.task.selection

    start = int(state.step)
    writer = MetricWriter(workdir, resume_step=start)
    if jax.process_index() == 0:
        files.write_text(files.path(workdir) / "config.json", config.to_json_best_effort(indent=2))
    batches = jdata.train_batches(
        config.data, batch_size=config.batch_size // jax.process_count(), seed=config.seed,
        start_step=start, process_index=jax.process_index(),
        process_count=jax.process_count())
    results: dict = {}
    bar = tqdm(total=sched.total, initial=start, unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0, desc=config.model.name)
    window_start, window_steps = time.perf_counter(), 0
    step = start
    compiled_step = None
    try:
        with _Preemption() as preemption:
            while step < sched.total:
                batch = jmesh.put_batch(next(batches), mesh, keys=("image", "mask", "real"))
                if compiled_step is None:
                    compiled_step = compile_step(train_step, state, batch)
                state, logs = compiled_step(state, batch)
                step += 1
                window_steps += 1
                logs = jax.device_get(logs)
                if not bool(logs.pop("finite")):
                    raise NonFiniteLossError(
                        f"non-finite loss or gradient at step {step} (loss={logs['loss']}); the "
                        f"update was not applied and the last good checkpoint in {workdir} is "
                        f"kept. Lower the learning rate or check the input data.")
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.4f}", epoch=step // steps_per_epoch)
                if step % sched.log_every == 0 or step == sched.total:
                    elapsed = time.perf_counter() - window_start
                    logs.update(lr=float(lr_fn(step - 1)), epoch=step / steps_per_epoch,
                                images_per_sec=window_steps * config.batch_size / elapsed)
                    writer.write(step, logs, prefix="")
                    window_start, window_steps = time.perf_counter(), 0
                if step % sched.eval_every == 0 or step == sched.total:
                    results = evaluate(config, eval_step, state.variables(), mesh, split=val_split,
                                       baselines=base)
                    scores = results[spec.primary_mask]["all"]
                    writer.write(step, {k: v for k, v in scores.items() if k != "count"},
                                 prefix=f"{val_split}/")
                    tqdm.write(f"step {step} ({val_split}): " + format_table(results).replace(
                        "\n", "\n" + " " * (9 + len(str(step)) + len(val_split))))
                    writer.write_images(step, {f"{val_split}/{spec.primary_mask}": (
                        sample_triplets(config, eval_step, state.variables(), mesh,
                                        split=val_split, output_name=spec.primary_mask))})
                    if scores[selection] > best:
                        best = float(scores[selection])
                        checkpointer.save_best(step, _model_items(state), _meta(
                            config, step, best, {"val": scores, "val_split": val_split}))
                preempted = preemption.reached(step)
                if step % sched.checkpoint_every == 0 or step == sched.total or preempted:
                    checkpointer.save_latest(step, _model_items(state), _train_items(state),
                                             _meta(config, step, best))
                if preempted:
                    tqdm.write(f"SIGTERM: saved a checkpoint at step {step}; exiting")
                    if raise_on_preemption:
                        raise Preempted(f"SIGTERM: {workdir} saved step {step} of {sched.total} "
                                        "and stopped; run again to resume")
                    break
    finally:
        bar.close()
        checkpointer.close()
        writer.close()
    return results


def log_summary(results: dict) -> str:
    """Final validation results as text."""
    return format_table(results) if results else "no validation ran"


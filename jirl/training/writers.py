"""Logging: scalars to TensorBoard (tensorboardX) and a JSON-lines file, images to TensorBoard,
from process 0 only."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
import numpy as np

from jirl import files

METRICS_FILE = "metrics.jsonl"


def truncate_records(path: str, last_step: int) -> int:
    """Drops the records of `path` (JSON lines) whose step is past `last_step`; returns how many.

    A run killed after its last checkpoint has logged steps that the resumed run logs again:
    without this, `metrics.jsonl` would hold two records for those steps. A line cut short by the
    kill is dropped too. The file is rewritten atomically (temporary file, then rename).
    """
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if int(record.get("step", 0)) > last_step:
                dropped += 1
            else:
                kept.append(files.dumps(record) + "\n")
    if dropped:
        files.write_text(path, "".join(kept))
    return dropped


class MetricWriter:
    """Writes `{name: scalar}` records to `<workdir>/metrics.jsonl` and TensorBoard event files.

    `resume_step`: the step training starts from. Records and TensorBoard events past it, left by
    an interrupted run, are dropped (TensorBoard's `purge_step`), so that there is exactly one
    record per logged step.
    """

    def __init__(self, workdir: str, enabled: bool | None = None, resume_step: int = 0):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            from tensorboardX import SummaryWriter

            path = os.path.join(workdir, METRICS_FILE)
            truncate_records(path, resume_step)
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1)
            self._jsonl = open(path, "a", encoding="utf-8")

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
        """One record: {"step": step, **scalars} (names prefixed with `prefix`)."""
        if not self.enabled:
            return
        record = {"step": int(step)}
        for name, value in scalars.items():
            record[prefix + name] = float(value)
            self._tb.add_scalar(prefix + name, float(value), int(step))
        self._jsonl.write(files.dumps(record) + "\n")
        self._jsonl.flush()

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """TensorBoard images: {name: [N, H, W, 3] floats in [0, 1]} (not in metrics.jsonl)."""
        if not self.enabled:
            return
        for name, batch in images.items():
            if len(batch):  # a process may hold no valid example of a small split
                self._tb.add_images(name, batch, int(step), dataformats="NHWC")
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()

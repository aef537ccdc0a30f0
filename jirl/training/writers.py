"""Logging: scalars to TensorBoard (tensorboardX) and a JSON-lines file, images to TensorBoard,
from process 0 only."""

from __future__ import annotations

import json
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
    return _truncate(path, last_step)[1]


def _truncate(path: str, last_step: int) -> tuple[list[str], int]:
    """(the lines of the records of `path` up to `last_step`, how many others there were, which
    are dropped from the file)."""
    source = files.path(path)
    if not source.exists():
        return [], 0
    kept, dropped = [], 0
    for line in source.read_text(encoding="utf-8").splitlines():
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
    return kept, dropped


class _Lines:
    """An append-only text file: a local file opened for appending, or on an object store
    (which cannot append) the whole object uploaded again after each line."""

    def __init__(self, path: str, lines: list[str]):
        self.path = path
        self._remote = files.is_remote(path)
        self._lines = lines
        self._file = None if self._remote else open(path, "a", encoding="utf-8")  # noqa: SIM115

    def append(self, line: str) -> None:
        if self._remote:
            self._lines.append(line)
            files.write_text(self.path, "".join(self._lines))
        else:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class MetricWriter:
    """Writes `{name: scalar}` records to `<workdir>/metrics.jsonl` and TensorBoard event files.

    `resume_step`: the step training starts from. Records and TensorBoard events past it, left by
    an interrupted run, are dropped (TensorBoard's `purge_step`), so that there is exactly one
    record per logged step. `workdir` may be on an object store (gs://...; TensorBoard's events
    there need google-cloud-storage, the `jirl[gcs]` extra).
    """

    def __init__(self, workdir: str, enabled: bool | None = None, resume_step: int = 0):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        if self.enabled:
            root = files.path(workdir)
            root.mkdir(parents=True, exist_ok=True)
            from tensorboardX import SummaryWriter

            path = str(root / METRICS_FILE)
            kept, _ = _truncate(path, resume_step)
            self._tb = SummaryWriter(str(root / "tensorboard"), purge_step=resume_step + 1)
            self._jsonl = _Lines(path, kept)

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
        """One record: {"step": step, **scalars} (names prefixed with `prefix`)."""
        if not self.enabled:
            return
        record = {"step": int(step)}
        for name, value in scalars.items():
            record[prefix + name] = float(value)
            self._tb.add_scalar(prefix + name, float(value), int(step))
        self._jsonl.append(files.dumps(record) + "\n")

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

"""Scalar logging: TensorBoard (tensorboardX) and a JSON-lines file, from process 0 only."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax


class MetricWriter:
    """Writes `{name: scalar}` records to `<workdir>/metrics.jsonl` and TensorBoard event files."""

    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

    def write(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
        """One record: {"step": step, **scalars} (names prefixed with `prefix`)."""
        if not self.enabled:
            return
        record = {"step": int(step)}
        for name, value in scalars.items():
            record[prefix + name] = float(value)
            self._tb.add_scalar(prefix + name, float(value), int(step))
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()

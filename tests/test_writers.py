"""metrics.jsonl / TensorBoard logging: one record per logged step, also across a resume."""

import json
import os

from jirl.training.writers import MetricWriter, truncate_records


def _steps(path):
    with open(path) as f:
        return [json.loads(line)["step"] for line in f]


def test_resume_drops_records_past_the_restored_step(tmp_path):
    writer = MetricWriter(str(tmp_path), enabled=True)
    for step in range(1, 8):
        writer.write(step, {"loss": 1.0 / step})
    writer.write(6, {"ap": 0.5}, prefix="val/")
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "loss"')  # a line cut short by SIGKILL
    # the run is resumed from its checkpoint at step 5 and logs steps 6, 7 again
    writer = MetricWriter(str(tmp_path), enabled=True, resume_step=5)
    for step in (6, 7):
        writer.write(step, {"loss": 2.0})
    writer.close()
    assert _steps(tmp_path / "metrics.jsonl") == [1, 2, 3, 4, 5, 6, 7]
    with open(tmp_path / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert records[5] == {"step": 6, "loss": 2.0} and records[4]["loss"] == 0.2


def test_tensorboard_purges_events_past_the_restored_step(tmp_path, monkeypatch):
    import tensorboardX

    created = []

    class Recorder:
        def __init__(self, logdir, purge_step=None):
            created.append((logdir, purge_step))

        def close(self):
            pass

    monkeypatch.setattr(tensorboardX, "SummaryWriter", Recorder)
    MetricWriter(str(tmp_path), enabled=True, resume_step=5).close()
    assert created == [(str(tmp_path / "tensorboard"), 6)]


def test_truncate_records_keeps_a_clean_file_untouched(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)))
    before = os.stat(path).st_mtime_ns
    assert truncate_records(str(path), 3) == 0
    assert os.stat(path).st_mtime_ns == before
    assert truncate_records(str(path), 1) == 2
    assert _steps(path) == [1]
    assert truncate_records(str(tmp_path / "missing.jsonl"), 0) == 0

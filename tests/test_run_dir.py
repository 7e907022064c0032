"""The run directory across reruns and resumes: nothing of an earlier run is appended to or lost."""

from __future__ import annotations

import json

from cluster.checkpoints import PREVIOUS_RUNS, archive_previous_run
from cluster.metrics import MetricsLogger


def test_a_fresh_run_moves_an_earlier_run_aside_whole(tmp_path):
    assert archive_previous_run(tmp_path) is None  # empty folder: nothing to move
    (tmp_path / "notes.txt").write_text("not a run")
    assert archive_previous_run(tmp_path) is None  # a folder without metrics or checkpoints is left alone
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 0}\n')
    (tmp_path / "checkpoints" / "iter_000001").mkdir(parents=True)
    (tmp_path / "eval.json").write_text("{}")
    first = archive_previous_run(tmp_path)
    assert first is not None and first.parent == tmp_path / PREVIOUS_RUNS
    assert sorted(p.name for p in tmp_path.iterdir()) == [PREVIOUS_RUNS]
    assert sorted(p.name for p in first.iterdir()) == ["checkpoints", "eval.json", "metrics.jsonl", "notes.txt"]
    assert (first / "metrics.jsonl").read_text() == '{"iteration": 0}\n'
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 5}\n')  # a second rerun within the same second
    second = archive_previous_run(tmp_path)
    assert second != first and (second / "metrics.jsonl").read_text() == '{"iteration": 5}\n'
    assert (first / "metrics.jsonl").read_text() == '{"iteration": 0}\n'


def test_resume_drops_rows_logged_after_the_checkpoint(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False, ray_gauges=False)
    for it in range(5):
        logger.log(it, {"reward/mean": float(it)})
    assert logger.drop_from(3) == 2
    logger.log(3, {"reward/mean": 30.0})
    logger.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1, 2, 3] and rows[-1]["reward/mean"] == 30.0


def test_resume_hides_tensorboard_steps_logged_after_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    crashed = MetricsLogger(tmp_path, ray_gauges=False)
    for it in range(5):
        crashed.log(it, {"reward/mean": float(it)})
    crashed.close()
    resumed = MetricsLogger(tmp_path, ray_gauges=False)  # a new process resuming from iteration 3
    resumed.drop_from(3)
    resumed.log(3, {"reward/mean": 30.0})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("reward/mean")
    assert [(s.step, s.value) for s in scalars] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0)]
    # One event file per session: the resumed logger opened its writer once, with the purge step.
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2

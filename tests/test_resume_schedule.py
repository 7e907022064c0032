"""Resuming with another `iterations` moves a decaying learning rate's horizon (learner.lr_schedule follows
the run's length unless learner.lr_schedule_iterations pins it): --resume says so, with the rate at the
resume point before and after, and names the key that keeps the schedule."""

from __future__ import annotations

import logging

import pytest

from cluster import checkpoints
from cluster.trainer import Trainer
from learner.config import LearnerConfig
from learner.engine import lr_horizon_change, scheduled_learning_rate
from tests.test_system import _config

COSINE = {"learner.lr_schedule": "cosine", "learner.learning_rate": 1e-3, "learner.lr_final_fraction": 0.1}


@pytest.mark.unit
def test_the_warning_gives_both_rates_and_the_key_only_when_the_horizon_moves():
    cosine = LearnerConfig(learning_rate=1e-3, lr_schedule="cosine", lr_final_fraction=0.1)
    note = lr_horizon_change(cosine, 4, cosine, 8, iteration=2)
    before, after = scheduled_learning_rate(cosine, 2, 4), scheduled_learning_rate(cosine, 2, 8)
    assert before == pytest.approx(5.5e-4) and after > before
    assert f"from {before:.4g} to {after:.4g}" in note and "horizon from 4 to 8" in note
    assert "learner.lr_schedule_iterations=4 keeps" in note
    pinned = cosine.model_copy(update={"lr_schedule_iterations": 4})
    assert lr_horizon_change(pinned, 4, pinned, 8, iteration=2) is None  # pinned: the same curve
    assert lr_horizon_change(cosine, 4, pinned, 8, iteration=2) is None  # pinned on resume to the old horizon
    assert lr_horizon_change(cosine, 4, cosine, 4, iteration=2) is None  # unchanged
    constant = LearnerConfig(learning_rate=1e-3)
    assert lr_horizon_change(constant, 4, constant, 8, iteration=2) is None  # no decay, no horizon


def _checkpointed_run(model: str, out, iterations: int) -> None:
    """A run folder whose newest checkpoint is iteration 2 of a cosine run of `iterations` (the trainer's
    own state record; no learner files are needed to read the schedule back)."""
    trainer = Trainer(_config(model, out, iterations=iterations, **COSINE))
    trainer.iteration = trainer.version = 2
    checkpoints.write_checkpoint(out, 2, lambda staging: [], trainer.state(), keep=2)


@pytest.mark.component
@pytest.mark.parametrize(("over", "warned"), [
    ({"iterations": 8}, True),
    ({"iterations": 8, "learner.lr_schedule_iterations": 4}, False),
    ({"iterations": 4}, False),
])
def test_resume_warns_when_the_runs_length_moves_the_schedule(tiny_sd3_path, tmp_path, capsys, caplog, over, warned):
    _checkpointed_run(tiny_sd3_path, tmp_path, iterations=4)
    resumed = Trainer(_config(tiny_sd3_path, tmp_path, **{**COSINE, **over}), resume=True)
    with caplog.at_level(logging.WARNING, logger="flowray"):
        found = resumed.open_checkpoint()
    assert found is not None and found[1]["iteration"] == 2
    printed = [line for line in capsys.readouterr().out.splitlines() if "lr_schedule_iterations" in line]
    logged = [r.getMessage() for r in caplog.records if r.name == "flowray"]
    if not warned:
        assert printed == [] and logged == []
        return
    cosine = resumed.cfg.learner
    before, after = scheduled_learning_rate(cosine, 2, 4), scheduled_learning_rate(cosine, 2, 8)
    (line,) = printed
    assert line.startswith("[flowray] WARNING: ") and f"from {before:.4g} to {after:.4g}" in line
    assert "learner.lr_schedule_iterations=4" in line
    assert logged == [line.removeprefix("[flowray] WARNING: ")]

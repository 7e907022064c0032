"""learner.lr_schedule: the rate is a function of the iteration alone, and it is the rate DeepSpeed's
optimizer steps with (ZeRO-0 torch AdamW and a ZeRO-2 wrapper)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from algorithms import ALGORITHMS
from learner.config import LearnerConfig
from learner.engine import scheduled_learning_rate
from tests.test_forward_process import _groups, _learner, _rollout, cfgs  # noqa: F401 (cfgs is a fixture)


@pytest.mark.unit
def test_cosine_runs_from_the_peak_to_the_final_fraction():
    cfg = LearnerConfig(learning_rate=1e-3, lr_schedule="cosine", lr_final_fraction=0.1)
    assert scheduled_learning_rate(cfg, 0, 100) == pytest.approx(1e-3)
    assert scheduled_learning_rate(cfg, 50, 100) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert scheduled_learning_rate(cfg, 100, 100) == pytest.approx(1e-4)
    assert scheduled_learning_rate(cfg, 150, 100) == pytest.approx(1e-4)  # resumed past the horizon: the floor
    rates = [scheduled_learning_rate(cfg, i, 100) for i in range(101)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))
    assert scheduled_learning_rate(LearnerConfig(learning_rate=1e-3), 77, 100) == 1e-3
    with pytest.raises(ValueError, match="iterations"):  # a cosine needs its horizon, never a silent default
        scheduled_learning_rate(cfg, 3, None)
    # its own horizon, when the run's length is only a cap (benchmarks/compare.py): the run's is ignored
    own = cfg.model_copy(update={"lr_schedule_iterations": 100})
    assert scheduled_learning_rate(own, 50, 1000) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert scheduled_learning_rate(own, 200, 1000) == pytest.approx(1e-4)
    assert math.isclose(scheduled_learning_rate(cfg, 25, 100), 1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))


@pytest.mark.component
@pytest.mark.parametrize("zero_stage", [0, 2])
def test_the_optimizer_steps_with_the_scheduled_rate(cfgs, zero_stage):  # noqa: F811 (the imported fixture)
    """At the horizon with a final fraction of 0 the rate is 0 and the weights stay bit for bit; at
    iteration 0 they move. Without the schedule reaching the optimizer both would move."""
    groups = _groups(_rollout(cfgs))
    learner = _learner(cfgs, ALGORITHMS["diffusion_nft"](train_timesteps=2), zero_stage=zero_stage,
                       lr_schedule="cosine", lr_final_fraction=0.0)
    learner.iterations = 4
    before = learner.export_weights()
    metrics = learner.train(groups, iteration=4)
    assert metrics["learner/lr"] == 0.0
    assert all(np.array_equal(before[k], v) for k, v in learner.export_weights().items())
    metrics = learner.train(groups, iteration=0)
    assert metrics["learner/lr"] == pytest.approx(1e-2)
    assert any(not np.array_equal(before[k], v) for k, v in learner.export_weights().items())

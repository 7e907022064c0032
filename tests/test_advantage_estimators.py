"""learner/advantages.py's estimator registry, and G2RPO's record through the shared "grpo" estimator."""

from __future__ import annotations

import pytest
import torch

from algorithms import ALGORITHMS
from learner.advantages import ADVANTAGE_ESTIMATORS, g2rpo_advantages, get_adv_est, register_adv_est
from learner.config import LearnerConfig
from models.config import SamplingConfig
from models.sampling import sample_group

pytestmark = pytest.mark.unit


def test_every_unit_names_a_registered_estimator():
    """Per instance: a unit may choose its estimator by a setting (ELBO-PG's `advantage`)."""
    for name, cls in ALGORITHMS.items():
        assert cls().advantage_estimator in ADVANTAGE_ESTIMATORS, name
    assert ALGORITHMS["elbo_pg"](advantage="zscore").advantage_estimator in ADVANTAGE_ESTIMATORS


def test_unknown_estimator_and_double_registration_are_errors():
    with pytest.raises(ValueError, match="not registered"):
        get_adv_est("no_such_estimator")
    with pytest.raises(ValueError, match="already registered"):
        register_adv_est("grpo")(lambda *a, **k: None)


def test_g2rpo_record_through_grpo_equals_the_paper_layout():
    """The G2RPO strategy's reward groups (k, lambda) and sample ids (k, b), fed to the registered "grpo"
    estimator with G2RPO's std form, give `g2rpo_advantages` of the rewards laid out [K, L, G]."""
    unit = ALGORITHMS["g2rpo"](steps=[0, 2], granularities=[1, 2, 3])
    sampling = SamplingConfig(group_size=4, num_steps=6)
    sigmas = torch.linspace(1.0, 0.0, 7)
    rollout = sample_group(unit, sampling, lambda x, s: -x, lambda n, gen: torch.randn(n, 2, 2, 2, generator=gen),
                           sigmas, generator=torch.Generator().manual_seed(0))
    k, lam, g = 2, 3, 4
    rewards = torch.rand(k * lam * g, generator=torch.Generator().manual_seed(1)).double()
    learner = LearnerConfig(adv_std="unbiased", adv_eps=1e-8)
    ours = get_adv_est(unit.advantage_estimator)({"reward": rewards}, rollout.reward_group, rollout.image_sample_id,
                                                 rollout.num_samples, weights={}, learner=learner)
    # The record lists images (k, lambda, b) in that order (algorithms/g2rpo.py).
    paper = g2rpo_advantages(rewards.view(k, lam, g))
    torch.testing.assert_close(ours.view(k, g).float(), paper.float(), rtol=1e-5, atol=1e-6)

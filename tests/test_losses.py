"""algorithms/losses.py: the clipped GRPO surrogate, its gradients and diagnostics; the per-step units' loss."""

from __future__ import annotations

import pytest
import torch

from algorithms import ALGORITHMS
from algorithms.losses import binned_means, grpo_clip_loss, pooled_mean_std
from algorithms.per_step import PerStepAlgorithm
from learner.config import LearnerConfig

pytestmark = pytest.mark.unit


def _loop_loss(logp, old, adv, eps):
    total = 0.0
    for lp, lo, a in zip(logp.tolist(), old.tolist(), adv.tolist(), strict=True):
        r = torch.exp(torch.tensor(lp - lo)).item()
        total += max(-a * r, -a * min(max(r, 1 - eps), 1 + eps))
    return total / len(adv)


def test_loss_matches_loop_and_on_policy_ratio_is_one():
    g = torch.Generator().manual_seed(0)
    old = torch.randn(32, generator=g)
    logp = old + 1e-3 * torch.randn(32, generator=g)
    adv = torch.randn(32, generator=g)
    loss, diag = grpo_clip_loss(logp, old, adv, clip_range=1e-3)
    assert loss.item() == pytest.approx(_loop_loss(logp, old, adv, 1e-3), rel=1e-6)
    _, on_policy = grpo_clip_loss(old.clone(), old, adv)
    assert on_policy["policy/ratio_mean"] == 1.0 and on_policy["policy/clipfrac"] == 0.0


def test_zero_gradient_where_clipped_in_the_advantage_direction():
    old = torch.zeros(4)
    # ratios: far above (A>0: clipped, no grad), far above (A<0: not clipped, grad), far below (A<0: clipped), inside
    logp = torch.tensor([0.1, 0.1, -0.1, 0.0], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, diag = grpo_clip_loss(logp, old, adv, clip_range=1e-2)
    loss.backward()
    assert logp.grad[0] == 0.0 and logp.grad[2] == 0.0
    assert logp.grad[1] > 0 and logp.grad[3] < 0
    assert diag["policy/clipfrac_high"] == 0.5 and diag["policy/clipfrac_low"] == 0.25


def test_kl_term_and_sigma_bins():
    logp = torch.zeros(6, requires_grad=True)
    kl = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    sigma = torch.tensor([0.05, 0.1, 0.3, 0.5, 0.9, 1.0])
    loss, diag = grpo_clip_loss(logp, torch.zeros(6), torch.zeros(6), kl=kl, beta=0.1, sigma=sigma)
    assert loss.item() == pytest.approx(0.25)
    assert diag["policy/kl"] == pytest.approx(2.5)
    assert diag["policy/kl/sigma_0.0-0.2"] == pytest.approx(0.5)
    assert diag["policy/kl/sigma_0.8-1.0"] == pytest.approx(4.5)
    assert "policy/kl/sigma_0.6-0.8" not in diag  # empty bins are not reported as zero


def test_diagnostics_stay_tensors_until_read_and_the_finite_check_is_a_value_check(monkeypatch):
    """The diagnostics are device tensors read on the host when asked (tests/test_host_syncs.py: never in
    the learner's micro-batch loop); the NaN check reads the log-probs, so it runs where that is free."""
    logp, sigma = torch.tensor([0.1, -0.2, 0.05]), torch.tensor([0.1, 0.5, 0.55])
    loss, diag = grpo_clip_loss(logp, torch.zeros(3), torch.ones(3), clip_range=0.15, sigma=sigma)
    assert all(isinstance(t, torch.Tensor) and t.ndim == 0 for t in diag.scalars.values())
    assert diag["policy/clipfrac"] == pytest.approx(1 / 3) and isinstance(diag["policy/loss"], float)
    ratios = torch.exp(torch.tensor([-0.2, 0.05]))  # sigma 0.5 and 0.55; max(-A r, -A clip(r)) = -r for both
    assert diag["policy/loss/sigma_0.4-0.6"] == pytest.approx(-ratios.mean().item())
    assert dict(diag)["policy/total_loss"] == loss.item()
    monkeypatch.setenv("FLOWRAY_DEBUG_CHECKS", "0")  # as on an accelerator: not read
    nan_loss, _ = grpo_clip_loss(torch.tensor([float("nan")]), torch.zeros(1), torch.zeros(1))
    assert torch.isnan(nan_loss)


def test_binned_means_edges():
    out = binned_means(torch.tensor([1.0, 2.0]), torch.tensor([0.2, 0.19999]), "x")
    assert out == {"x/sigma_0.0-0.2": 2.0, "x/sigma_0.2-0.4": 1.0}


def test_unknown_algorithm_and_bad_input():
    from cluster.config import ConfigError, load_config
    from tests.tiny_models import FLOWGRPO

    with pytest.raises(ConfigError, match=r"algorithm.name: 'ppo' is not registered.*'awm'.*'flow_grpo'.*'g2rpo'"):
        load_config(FLOWGRPO, ["algorithm.name=ppo"])
    with pytest.raises(ValueError, match="equal 1-D shapes"):
        grpo_clip_loss(torch.zeros(3), torch.zeros(2), torch.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        grpo_clip_loss(torch.tensor([float("nan")]), torch.zeros(1), torch.zeros(1))


@pytest.mark.parametrize("name", [n for n, cls in ALGORITHMS.items()
                                  if issubclass(cls, PerStepAlgorithm) and not cls.records_step_means])
def test_per_step_units_loss_is_the_clipped_surrogate_with_the_learner_settings(name):
    """Every per-step unit that does not compare step means (GRPO-Guard, Flow-DPPO: tests/test_per_step_2026.py)
    trains with grpo_clip_loss, its clip range (both sides) and KL weight taken from the learner section."""
    g = torch.Generator().manual_seed(1)
    old = torch.randn(16, generator=g)
    logp, adv, kl = old + 3e-3 * torch.randn(16, generator=g), torch.randn(16, generator=g), torch.rand(16, generator=g)
    sigma = torch.rand(16, generator=g)
    learner = LearnerConfig(clip_range=1e-3, clip_range_high=2e-3, beta=0.3)
    loss, diag = ALGORITHMS[name]().loss(logp, old, adv, learner=learner, kl=kl, sigma=sigma)
    ref, ref_diag = grpo_clip_loss(logp, old, adv, clip_range=1e-3, clip_range_high=2e-3, kl=kl, beta=0.3, sigma=sigma)
    assert torch.equal(loss, ref) and diag == ref_diag


def test_asymmetric_clip_range_clips_each_side_at_its_own_bound():
    # max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high)), written as a loop; ratios spread over +-3e-3.
    g = torch.Generator().manual_seed(4)
    old = torch.randn(64, generator=g)
    logp = old + 3e-3 * torch.randn(64, generator=g)
    adv = torch.randn(64, generator=g)
    low, high = 1e-3, 2.8e-3
    ref = 0.0
    for lp, lo, a in zip(logp.tolist(), old.tolist(), adv.tolist(), strict=True):
        r = torch.exp(torch.tensor(lp - lo)).item()
        ref += max(-a * r, -a * min(max(r, 1 - low), 1 + high))
    loss, diag = grpo_clip_loss(logp, old, adv, clip_range=low, clip_range_high=high)
    assert loss.item() == pytest.approx(ref / 64, rel=1e-6)
    ratio = torch.exp(logp - old)
    assert diag["policy/clipfrac_high"] == pytest.approx((ratio > 1 + high).float().mean().item())
    assert diag["policy/clipfrac_low"] == pytest.approx((ratio < 1 - low).float().mean().item())
    symmetric, _ = grpo_clip_loss(logp, old, adv, clip_range=low)
    assert symmetric.item() != pytest.approx(loss.item(), rel=1e-9)


def test_pooled_mean_std_equals_the_statistics_of_the_union():
    gen = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, generator=gen) * s + m for n, s, m in ((5, 1.0, 0.0), (3, 0.1, 2.0), (8, 2.0, -1.0))]
    mean, std = pooled_mean_std([(len(p), p.mean().item(), p.std(unbiased=False).item()) for p in parts])
    union = torch.cat(parts)
    assert mean == pytest.approx(union.mean().item(), abs=1e-6)
    assert std == pytest.approx(union.std(unbiased=False).item(), abs=1e-6)

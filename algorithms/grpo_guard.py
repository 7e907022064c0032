"""GRPO-Guard (Wang et al. 2025, arXiv 2510.22319): Flow-GRPO with the importance ratio normalised per step.

Under the marginal-preserving SDE the per-step log-ratio of the mean-reduced Gaussian log-probs is
mean_d(eps * delta) / sigma_s - mse / (2 sigma_s^2) for delta = mu_theta - mu_old: it drifts below 0 as the
policy moves (so the clip range acts on one side only) and is scaled by 1 / sigma_s (so low-noise steps
dominate the gradient). RatioNorm (`algorithms/losses.py` `guard_log_ratio`) removes both, and the clipped
surrogate of Flow-GRPO runs on the normalised ratio. No official code is public; this follows Flow-Factory's
GRPOGuardTrainer, which treats the sigma_s factor itself as the paper's gradient reweighting across noise
levels (docs/fidelity.md: verl-omni's GRPOGuardLoss also divides by |dt|, not done here).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from algorithms.base import register_algorithm
from algorithms.flow_grpo import FlowGRPO
from algorithms.losses import grpo_clip_loss, guard_log_ratio


class StepMeansFlowGRPO(FlowGRPO):
    """Flow-GRPO's sampling with each trained step's mean recorded, for a loss that compares the current and
    the sampler's step Gaussians through their mean-reduced Gaussian log-probs (GRPO-Guard, Flow-DPPO).
    Not registered: a base, as PerStepAlgorithm is."""

    legacy_layout: ClassVar[bool] = False  # new in the `algorithm` section's layout: nothing to migrate from
    records_step_means: ClassVar[bool] = True

    def check(self, cfg) -> None:
        super().check(cfg)
        if cfg.sampling.log_prob_form != "gaussian":
            raise ValueError(
                f"algorithm {self.name!r} compares the steps' Gaussian means through their log-probs: it needs "
                f"sampling.log_prob_form='gaussian' (got {cfg.sampling.log_prob_form!r})"
            )


@register_algorithm
class GRPOGuard(StepMeansFlowGRPO):
    """Flow-GRPO's sampling and clipped surrogate, on GRPO-Guard's normalised per-step ratio."""

    name: Literal["grpo_guard"] = "grpo_guard"

    def loss(self, log_prob, old_log_prob, advantages, *, learner, kl=None, sigma=None, mean=None, old_mean=None,
             std=None):
        """`grpo_clip_loss` with learner.clip_range on exp(`guard_log_ratio`), plus learner.beta * KL."""
        log_ratio = guard_log_ratio(log_prob, old_log_prob.detach(), mean, old_mean.detach(), std)
        return grpo_clip_loss(log_ratio, log_ratio.new_zeros(log_ratio.shape), advantages,
                              clip_range=learner.clip_range, kl=kl, beta=learner.beta, sigma=sigma,
                              clip_range_high=learner.clip_range_high)

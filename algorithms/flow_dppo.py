"""Flow-DPPO (arXiv 2606.11025): Flow-GRPO's SDE rollouts with a per-step Gaussian KL mask in place of ratio
clipping.

Each trained step is a Gaussian N(mu, sigma_s^2 I); between the current and the sampling policy its KL is
mean_d (mu_theta - mu_old)^2 / (2 sigma_s^2) (`models/sde.py` `gaussian_kl_equal_std`, the mean-reduced form
UniRL's FlowDPPO uses). The surrogate -A r keeps its unclipped ratio, and a transition is masked out only where
that KL reaches `kl_mask_threshold` while the ratio moves the way its advantage pushes (`algorithms/losses.py`
`dppo_keep_mask`): the trust region is measured on the policy itself, not on one sample's ratio. Follows
UniRL's unirl/algorithms/flowdppo.py (docs/fidelity.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from algorithms.base import register_algorithm
from algorithms.grpo_guard import StepMeansFlowGRPO
from algorithms.losses import dppo_loss
from models.sde import gaussian_kl_equal_std


@register_algorithm
class FlowDPPO(StepMeansFlowGRPO):
    """Flow-GRPO's sampling; the loss masks transitions whose step KL left the bound (no ratio clipping)."""

    name: Literal["flow_dppo"] = "flow_dppo"
    kl_mask_threshold: float = Field(
        1e-5, gt=0.0,
        description="tau: a transition whose step KL(new || old), mean over latent dims, is at least tau and whose "
        "ratio moves the way its advantage pushes is masked out (UniRL's kl_mask_threshold, 1e-5).",
    )

    def loss(self, log_prob, old_log_prob, advantages, *, learner, kl=None, sigma=None, mean=None, old_mean=None,
             std=None):
        """`dppo_loss` with `kl_mask_threshold`, plus learner.beta * KL to the reference."""
        step_kl = gaussian_kl_equal_std(mean.float(), old_mean.float(), std.float())
        return dppo_loss(log_prob, old_log_prob, advantages, step_kl, threshold=self.kl_mask_threshold, kl=kl,
                         beta=learner.beta, sigma=sigma)

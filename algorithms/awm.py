"""Advantage Weighted Matching (Xue et al. 2025, arXiv 2509.25050): the flow-matching loss of each final
sample, re-noised, as a log-likelihood surrogate; a PPO-style clipped ratio of the trained to the sampling
policy's surrogate, weighted by the advantage (Flow-Factory trainers/awm.py)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from algorithms.base import register_algorithm
from algorithms.forward_process import ForwardProcessAlgorithm
from algorithms.losses import fm_log_likelihood, grpo_clip_loss, velocity_kl


@register_algorithm
class AWM(ForwardProcessAlgorithm):
    """AWM: advantage-weighted flow matching; learner.clip_range clips the ratio of per-sample likelihoods."""

    legacy_keys: ClassVar[dict[str, str]] = {
        **ForwardProcessAlgorithm.legacy_keys, "learner.awm_weighting": "weighting", "learner.awm_ghuber_power": "ghuber_power",
    }

    name: Literal["awm"] = "awm"
    weighting: Literal["uniform", "t", "ghuber"] = Field(
        "uniform", description="Time weighting of the flow-matching log-likelihood (Flow-Factory awm_weighting; "
        "its SD3.5 example uses 'ghuber').",
    )
    ghuber_power: float = Field(0.25, gt=0, le=1, description="The power p of the 'ghuber' weighting.")

    def loss(self, v, v_old, target, sigma, advantages, *, learner, v_ref=None, terms=None):
        """The clipped surrogate of `grpo_clip_loss` on the ratio exp(log p_theta - log p_old) of
        `fm_log_likelihood`s at the same (x_t, sigma, eps), the old one under the sampling policy, plus
        learner.beta * `velocity_kl`."""
        log_prob = fm_log_likelihood(v, target, sigma, self.weighting, self.ghuber_power)
        old = fm_log_likelihood(v_old.detach(), target, sigma, self.weighting, self.ghuber_power)
        kl = velocity_kl(v, v_ref).double() if v_ref is not None else None
        return grpo_clip_loss(log_prob, old, advantages.double(), clip_range=learner.clip_range, kl=kl,
                              beta=learner.beta, sigma=sigma)

"""The per-step family's base (Flow-GRPO, Flow-GRPO-Fast, DanceGRPO, MixGRPO, G2RPO): every trained
denoising step is a Gaussian policy with a log-prob; the learner recomputes the log-probs of the stored
SDE transitions (learner/per_step.py) and applies the clipped surrogate of Flow-GRPO (paper Eq. 8) with a
KL to the reference policy.

The family's loss signature: loss(log_prob, old_log_prob, advantages, *, learner, kl, sigma, mean, old_mean,
std) with [N] tensors per transition, `learner` the learner config section (clip range, KL weight), and the
step's Gaussian means under the current policy and the sampler's (the latter recorded only for units with
`records_step_means`, else None).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from algorithms.base import Algorithm
from algorithms.losses import grpo_clip_loss


class PerStepAlgorithm(Algorithm):
    """Settings every per-step algorithm shares."""

    learner_plan: ClassVar[str] = "per_step"
    trains_sampling_steps: ClassVar[bool] = True
    # The sampler keeps each trained step's Gaussian mean (Transitions.mean) for a loss that compares the old
    # and new policies' means (`loss`'s mean / old_mean / std).
    records_step_means: ClassVar[bool] = False
    legacy_keys: ClassVar[dict[str, str]] = {
        "learner.kl_form": "kl_form", "learner.recompute_old_log_probs": "recompute_old_log_probs",
    }

    kl_form: Literal["flow_grpo", "exact"] = Field(
        "flow_grpo",
        description="KL scale: 'flow_grpo' divides by 2 s^2 as the Flow-GRPO code does (its published beta was "
        "tuned so); 'exact' divides by the step's variance 2 s^2 (-dt).",
    )
    recompute_old_log_probs: bool = Field(
        False,
        description="The learner recomputes every transition's old log-prob under its current weights before its "
        "first step, instead of trusting the sampler's (when learner/first_minibatch_ratio_* drift from 1, 0).",
    )

    @classmethod
    def legacy_selector(cls) -> dict[str, str]:
        """How the layout before the `algorithm` section named a per-step algorithm: its strategy."""
        return {"sampling.strategy": cls.model_fields["name"].default, "learner.loss": "grpo_clip"}

    def learner_items(self, record) -> int:
        return len(record.transitions)  # every trained transition's log-prob is recomputed

    def learner_frozen_forwards(self, learner) -> tuple[str, ...]:
        return super().learner_frozen_forwards(learner) + (("old log-probs",) if self.recompute_old_log_probs else ())

    def loss(self, log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, *, learner,
             kl: torch.Tensor | None = None, sigma: torch.Tensor | None = None, mean: torch.Tensor | None = None,
             old_mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
        """The clipped surrogate with learner.clip_range (and clip_range_high) plus learner.beta * KL.
        `mean`, `old_mean` [N, ...] and `std` (broadcastable): the step's Gaussian under the current policy and
        the sampler's, given to units that record them (`records_step_means`)."""
        return grpo_clip_loss(log_prob, old_log_prob, advantages, clip_range=learner.clip_range, kl=kl,
                              beta=learner.beta, sigma=sigma, clip_range_high=learner.clip_range_high)


def check_trained_steps(name: str, trainable: int, fraction: float) -> None:
    """timestep_fraction must train at least one of the `trainable` steps."""
    if int(trainable * fraction) < 1:
        raise ValueError(
            f"algorithm.timestep_fraction ({fraction}) trains int({trainable} * fraction) = 0 of {name}'s "
            f"{trainable} trainable steps: raise it to at least 1 / {trainable}"
        )

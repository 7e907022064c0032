"""DGPO, Direct Group Preference Optimization (Luo, Hu, Tang; arXiv 2510.08425): a DPO between the positive
and the negative part of each prompt's group, on ODE rollouts, with no per-step log-probabilities.

The group's implicit reward difference is measured by how much better than the reference (base) policy the
policy fits its samples: x_b = (beta_dpo / G) sum_i A_i (dsm_i - dsm_ref_i) over the G samples of a group at
one shared re-noising draw (a block), dsm the flow-matching loss at (x_t, t, eps). The loss -log sigmoid(-x_b)
has gradient sigmoid(x_b) (beta_dpo / G) sum_i A_i grad dsm_i, which the reference code (Luo-Yihong/DGPO
scripts/train_sd3_dgpo.py `compute_group_dgpo_loss_allreduce`) writes as mean_i w_b A_i dsm_i with the weight
w_b = sigmoid(x_b) detached (`dgpo_group_weights`, `dgpo_loss`). Here w_b is computed before the update from
every row's no-grad velocities (the sampling and reference policies), which is the reference's value when
the update is one optimizer step per iteration as its gradient accumulation makes it; `group_coupled` asks
the learner for that pass.

The whole group is re-noised on the same K draws (the reference: one shared noise per group, the same
timesteps for every sample), from the noisiest `timestep_fraction` of the schedule (its trunc_steps).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field

from algorithms.base import register_algorithm
from algorithms.forward_process import Draws, ForwardProcessAlgorithm
from algorithms.losses import dgpo_group_weights, dgpo_loss, dsm_loss, velocity_kl


@register_algorithm
class DGPO(ForwardProcessAlgorithm):
    """DGPO with the reference code's PPO-style DSM clip and its velocity KL (learner.beta)."""

    legacy_layout: ClassVar[bool] = False  # added with the `algorithm` section: nothing to migrate from

    name: Literal["dgpo"] = "dgpo"
    group_coupled: ClassVar[bool] = True

    beta_dpo: float = Field(
        100.0, gt=0, description="beta of the group DPO logit (the reference: 100 for GenEval and OCR, 10 for "
        "PickScore; its README recommends 10-100).",
    )
    dsm_clip_range: float = Field(
        1e-2, ge=0, description="The reference's clip_dsm: a row whose ratio exp(dsm_old - dsm) passed 1 + c (A > "
        "0) or fell below 1 - c (A <= 0) loses its gradient (1e-2 GenEval and OCR, 5e-2 PickScore).",
    )
    train_timesteps: int = Field(
        4, ge=1, description="K, the timesteps each group is re-noised at per iteration, shared by its samples "
        "(the reference's num_train_timesteps 4), drawn from the noisiest timestep_fraction of the schedule.",
    )
    timestep_fraction: float = Field(
        0.7, gt=0, le=1, description="The noisiest share of the sampling schedule the K timesteps are drawn from "
        "(the reference's trunc_steps: 6 of 10 steps, indices 0-6, for OCR and PickScore; 4 for GenEval).",
    )

    @property
    def needs_old_velocity(self) -> bool:
        return False  # the update-start dsm comes from the group pass (`terms`)

    def needs_reference(self, learner) -> bool:
        return True  # dsm_ref, whatever the KL weight

    def learner_frozen_forwards(self, learner) -> tuple[str, ...]:
        # the group pass (the update-start and reference policies, the sampling one when separate), then the
        # KL's reference forward beside the trained one
        old = ("old policy",) if self.sampling_policy_is_separate else ()
        return ("update-start policy", *old, "reference", *(("reference",) if learner.beta > 0 else ()))

    def draws(self) -> Draws:
        return Draws(shared=True, stratified=False, fraction=self.timestep_fraction)

    def check(self, cfg) -> None:
        super().check(cfg)
        eligible = max(1, math.ceil(self.timestep_fraction * cfg.sampling.num_steps - 1e-9))
        if self.train_timesteps > eligible:
            raise ValueError(
                f"algorithm.train_timesteps ({self.train_timesteps}) exceeds the {eligible} noisiest steps that "
                f"algorithm.timestep_fraction ({self.timestep_fraction}) leaves of sampling.num_steps "
                f"({cfg.sampling.num_steps}): raise the fraction or lower train_timesteps"
            )
        if cfg.learner.optimizer_steps_per_iteration != 1 or cfg.learner.num_inner_epochs != 1:
            raise ValueError(
                "dgpo: learner.optimizer_steps_per_iteration and learner.num_inner_epochs must be 1: the group "
                "weights are computed from the policy the update starts from, which is the stop-gradient value "
                "only while the whole iteration is one optimizer step (the reference accumulates the epoch)"
            )

    def row_statistics(self, v, v_old, v_ref, target, sigma):
        return {"dsm": dsm_loss(v, target), "dsm_old": dsm_loss(v_old, target), "dsm_ref": dsm_loss(v_ref, target)}

    def group_terms(self, stats, advantages, block, group_size):
        # the weight from the update-start policy (the loss's sg(dsm)), the clip against the sampling policy
        w = dgpo_group_weights(stats["dsm"], stats["dsm_ref"], advantages, block, group_size, self.beta_dpo)
        return {"group_weight": w, "dsm_old": stats["dsm_old"]}

    def loss(self, v, v_old, target, sigma, advantages, *, learner, v_ref=None, terms=None):
        """`dgpo_loss` with the group pass's weights, plus learner.beta * `velocity_kl` (the reference's
        kl_beta) when v_ref is given (learner.beta > 0)."""
        loss, diag = dgpo_loss(v, target, advantages, terms["group_weight"], terms["dsm_old"],
                               clip_range=self.dsm_clip_range, sigma=sigma)
        if v_ref is not None:
            kl = velocity_kl(v, v_ref)
            loss = loss + learner.beta * kl.mean()
            diag.scalar("policy/kl", kl.mean())
            diag.bin("policy/kl", kl, sigma)
        diag.scalar("policy/total_loss", loss)
        return loss, diag

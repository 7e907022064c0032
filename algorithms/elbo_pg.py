"""ELBO-based policy gradient (Choi et al. 2026, arXiv 2602.04663) with V-GRPO's variance reduction (Tang et
al. 2026, arXiv 2604.23380): the likelihood of a final sample is its ELBO, estimated by re-noising it at a few
timesteps, and the policy gradient is taken through that surrogate; any solver may sample.

- Likelihood (2602.04663 'adaptive'): ELBO = -mean (x0_hat - x0)^2 / sg(mean |x0_hat - x0|) per (sample, t)
  (`elbo_log_likelihood`), for the trained and for the sampling ("old") policy at the same (x_t, t, eps).
- Loss (`elbo_pg_loss`): EPG -sg(rho) A ELBO or PEPG -sg(rho) (A - log rho) ELBO, rho = exp(sg(ELBO) -
  ELBO_old) unclipped, averaged over the K timesteps and the samples; plus learner.beta * the velocity KL.
- Advantage: 'centred' A = advantage_scale (R - mean_group) (the paper's 'exact' mode: beta / alpha = 0.1,
  no std, no clip) or 'zscore' the GRPO z-score soft-clipped eta tanh(A / eta) (V-GRPO, eta = 3).
- Variance reduction (V-GRPO): every sample of a prompt group is re-noised on the same K (t, eps) pairs,
  the K timesteps one per equal stratum of the schedule. 2602.04663's own code draws them per sample, at
  random: `shared_draws: false, stratified: false` gives that.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from algorithms.base import register_algorithm
from algorithms.forward_process import Draws, ForwardProcessAlgorithm
from algorithms.losses import elbo_log_likelihood, elbo_pg_loss, soft_clip, velocity_kl


@register_algorithm
class ELBOPolicyGradient(ForwardProcessAlgorithm):
    """ELBO policy gradient: the sampling policy is an EMA of the trained one, as the paper's 'old' adapter."""

    legacy_layout: ClassVar[bool] = False  # added with the `algorithm` section: nothing to migrate from

    name: Literal["elbo_pg"] = "elbo_pg"
    old_policy: Literal["current", "ema"] = Field(
        "ema", description="The sampling ('old') policy; 2602.04663 samples with an EMA adapter (DECAY_TYPE 1: "
        "decay min(0.001 step, 0.5)), see ForwardProcessAlgorithm.old_policy.",
    )
    method: Literal["epg", "pepg"] = Field(
        "epg", description="The policy gradient: 'epg' -rho A ELBO; 'pepg' -rho (A - log rho) ELBO, whose weight "
        "vanishes where log(pi / pi_old) = A (2602.04663's best; 'epg' is its simple one).",
    )
    advantage: Literal["centred", "zscore"] = Field(
        "centred", description="'centred': advantage_scale * (R - group mean), no std, no clip (2602.04663's "
        "ADV=exact); 'zscore': the GRPO z-score (learner.std_mode, adv_eps, adv_clip) soft-clipped by "
        "eta * tanh(A / eta) (V-GRPO).",
    )
    advantage_scale: float = Field(
        0.1, gt=0, description="'centred': the scale beta / alpha of the paper's exact advantage (1e-4 / 1e-3)."
    )
    soft_clip_eta: float = Field(3.0, gt=0, description="'zscore': V-GRPO's eta of eta * tanh(A / eta).")
    shared_draws: bool = Field(
        True, description="Re-noise every sample of a prompt group on the same (t, eps) pairs (V-GRPO): the "
        "group's likelihoods differ by the samples, not by the draws.",
    )
    stratified: bool = Field(
        True, description="One timestep from each of train_timesteps equal strata of the schedule (V-GRPO), "
        "instead of train_timesteps distinct ones at random (2602.04663's code).",
    )

    @property
    def advantage_estimator(self) -> str:  # type: ignore[override]
        return "centred" if self.advantage == "centred" else "grpo"

    def draws(self) -> Draws:
        return Draws(shared=self.shared_draws, stratified=self.stratified)

    def loss(self, v, v_old, target, sigma, advantages, *, learner, v_ref=None, terms=None):
        """`elbo_pg_loss` of the trained and sampling policies' ELBOs at the same draw, plus learner.beta *
        `velocity_kl` when v_ref is given."""
        adv = advantages.double()
        adv = adv * self.advantage_scale if self.advantage == "centred" else soft_clip(adv, self.soft_clip_eta)
        loss, diag = elbo_pg_loss(elbo_log_likelihood(v, target, sigma), elbo_log_likelihood(v_old, target, sigma),
                                  adv, proximal=self.method == "pepg")
        if v_ref is not None:
            kl = velocity_kl(v, v_ref)
            loss = loss + learner.beta * kl.mean()
            diag.scalar("policy/kl", kl.mean())
            diag.bin("policy/kl", kl, sigma)
        diag.scalar("policy/total_loss", loss)
        return loss, diag

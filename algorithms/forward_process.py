"""The forward-process family's base (DiffusionNFT, AWM): G final images per prompt from any solver.

DiffusionNFT (Zheng et al. 2025, arXiv 2509.16117) and Advantage Weighted Matching (Xue et al. 2025,
arXiv 2509.25050) train on the clean final samples only: the learner noises each x0 again at a few
timesteps (learner/forward_process.py), so nothing per step is recorded and any solver may sample:
'ode' (Euler), 'dpm' (DPM-Solver++(2M), NVlabs' `solver="dpm2"` default) or 'sde' (the configured SDE
step, for exploration). The record carries the final latents (x0 for the learner) and no transitions.

The family's loss signature: loss(v, v_old, target, sigma, advantages, *, learner, v_ref, terms) with v*
[N, ...] velocities at the re-noised samples, target = eps - x0, sigma and advantages [N], `learner` the
learner config section, v_ref the reference policy's velocity (None unless learner.beta > 0), v_old None
unless `needs_old_velocity`, and `terms` the per-row tensors a group-coupled unit computed before the update
(`group_terms`; None for the others).

How the learner re-noises (`draws`): by default each sample gets its own K timesteps and noises; a unit may
share one (t, eps) set across a prompt's group (V-GRPO's variance reduction, DGPO's group logit), stratify
the K timesteps over the schedule, or draw from its noisiest fraction only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field

from algorithms.base import Algorithm
from models.sampling import Recorder, initial_noise, integrate, sde_mode, trajectory_rollout


@dataclass(frozen=True)
class Draws:
    """How the learner draws the re-noising (t, eps) of each sample: `shared` one set per prompt group
    (every sample of the group on the same pairs), `stratified` one t per equal stratum of the eligible
    schedule (else K distinct timesteps at random), `fraction` the eligible share of the sampling schedule
    from its noisy end (1: all of it)."""

    shared: bool = False
    stratified: bool = False
    fraction: float = 1.0


class ForwardProcessAlgorithm(Algorithm):
    """Settings every forward-process algorithm shares: the solver, the re-noised timesteps and the
    sampling ("old") policy."""

    learner_plan: ClassVar[str] = "forward_process"
    legacy_keys: ClassVar[dict[str, str]] = {
        "sampling.solver": "solver",
        **{f"learner.{k}": k for k in ("train_timesteps", "old_policy", "old_policy_decay_flat",
                                       "old_policy_decay_rate", "old_policy_decay_max")},
    }

    solver: Literal["ode", "dpm", "sde"] = Field(
        "ode",
        description="The sampler of the final images: 'ode' (Euler), 'dpm' (DPM-Solver++(2M), DiffusionNFT's "
        "default) or 'sde' (sampling.sde_kind at every step, for exploration).",
    )
    train_timesteps: int = Field(
        9, ge=1, description="K, the timesteps each final sample is re-noised at per iteration, drawn without "
        "replacement from the sampling schedule (DiffusionNFT: int(10 * 0.99) = 9).",
    )
    old_policy: Literal["current", "ema"] = Field(
        "current", description="The sampling ('old') policy. 'current': the weights at the start of each "
        "iteration's update (on-policy); 'ema': an EMA of the trained weights kept on the learner and synced to "
        "the rollout actors (DiffusionNFT), decay min(old_policy_decay_max, old_policy_decay_rate * (step - "
        "old_policy_decay_flat)) after each iteration, 0 during the flat steps.",
    )
    old_policy_decay_flat: int = Field(0, ge=0, description="old_policy 'ema': optimizer steps with decay 0 (NVlabs decay_type 2: 75).")
    old_policy_decay_rate: float = Field(
        1e-3, ge=0, description="old_policy 'ema': decay growth per optimizer step (NVlabs decay_type 1: 0.001; 2: 0.0075)."
    )
    old_policy_decay_max: float = Field(
        0.5, ge=0, lt=1, description="old_policy 'ema': the decay's ceiling (NVlabs decay_type 1: 0.5; 2: 0.999)."
    )

    @classmethod
    def legacy_selector(cls) -> dict[str, str]:
        """How the layout before the `algorithm` section named a forward-process algorithm: its loss."""
        return {"sampling.strategy": "forward_process", "learner.loss": cls.model_fields["name"].default}

    def check(self, cfg) -> None:
        if cfg.learner.zero_stage == 3:
            raise ValueError(
                f"learner.zero_stage 3 is not supported with {self.name}: the sampling policy's velocity is "
                "evaluated by loading its weights into the (unpartitioned) trainable parameters; use 0-2"
            )
        if self.train_timesteps > cfg.sampling.num_steps:
            raise ValueError(
                f"algorithm.train_timesteps ({self.train_timesteps}) exceeds sampling.num_steps "
                f"({cfg.sampling.num_steps}): the timesteps are drawn without replacement from the sampling schedule"
            )

    @property
    def sampling_policy_is_separate(self) -> bool:
        return self.old_policy == "ema"

    # ---- what the learner computes for the loss (learner/forward_process.py asks, never tests a name)

    def draws(self) -> Draws:
        """The re-noising draws: per sample, K distinct timesteps of the whole schedule (NVlabs)."""
        return Draws()

    @property
    def needs_old_velocity(self) -> bool:
        """Whether the loss takes the sampling policy's velocity v_old at every trained row."""
        return True

    # A group-coupled loss (DGPO) weighs each row by a statistic of its whole group, computed before the
    # update from the no-grad velocities of every row: `row_statistics` per micro-batch, then `group_terms`.
    group_coupled: ClassVar[bool] = False

    def row_statistics(self, v, v_old, v_ref, target, sigma) -> dict:
        """A few numbers per row [N] from the no-grad velocities of the weights the update starts from (v), the
        sampling policy (v_old: v itself unless it is separate) and the reference policy (v_ref)."""
        raise NotImplementedError

    def group_terms(self, stats, advantages, block, group_size) -> dict:
        """Per-row tensors [N] for the loss's `terms`, from every row's `row_statistics`: `block` [N] numbers
        the rows that share a group and a draw; `group_size` [N] the group's sample count."""
        raise NotImplementedError

    def learner_device_terms(self, trainable: int) -> list[tuple[str, float, tuple[str, ...]]]:
        # learner/forward_process.py keeps the sampling policy beside the trained weights on the device (fp32
        # for bf16 weights, `held_dtype`), even when 'current'.
        return [("sampling-policy weights (fp32)", 4.0 * trainable, ())]

    def learner_items(self, record) -> int:
        return record.num_samples * self.train_timesteps  # each kept sample re-noised at K sigmas

    def learner_frozen_forwards(self, learner) -> tuple[str, ...]:
        old = ("old policy",) if self.needs_old_velocity else ()
        return (*old, *(("reference",) if self.needs_reference(learner) else ()))

    def sample(self, sampling, velocity, init_noise, sigmas, generator, iteration):
        """G independent trajectories with `solver`, keeping only the final latents (x0)."""
        g, num_steps = sampling.group_size, sigmas.numel() - 1
        x = initial_noise(init_noise, g, self.same_latent(sampling), generator)
        if self.solver == "sde":
            modes = [sde_mode(sampling.sde_kind, sigmas[i + 1].item()) for i in range(num_steps)]
        else:
            modes = [self.solver] * num_steps
        recorder = Recorder()  # stays empty: the learner needs x0, not transitions
        final = integrate(velocity, x, sigmas, modes, {}, recorder, sampling, generator)
        return trajectory_rollout(self.name, sampling, velocity, recorder, final, learner_needs_final=True)

    def loss(self, v, v_old, target, sigma, advantages, *, learner, v_ref=None, terms=None):
        raise NotImplementedError

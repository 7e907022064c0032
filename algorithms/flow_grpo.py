"""Flow-GRPO (Liu et al. 2025, arXiv 2505.05470) and Flow-GRPO-Fast.

Flow-GRPO samples with the marginal-preserving SDE (Eq. 9) at every one of the T_train steps and trains the
first int(T * timestep_fraction) transitions; evaluation uses T_eval ODE steps (denoising reduction).
Flow-GRPO-Fast samples ODE, an SDE window of w steps at a random start, then ODE, and trains the window.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from algorithms.base import register_algorithm
from algorithms.per_step import PerStepAlgorithm, check_trained_steps
from models.sampling import (
    Recorder,
    all_rows,
    initial_noise,
    integrate,
    sde_mode,
    trajectory_rollout,
    window_modes,
)


@register_algorithm
class FlowGRPO(PerStepAlgorithm):
    """Flow-GRPO: the SDE at every step, the first int(T * timestep_fraction) steps trained."""

    legacy_keys: ClassVar[dict[str, str]] = {
        **PerStepAlgorithm.legacy_keys, "sampling.timestep_fraction": "timestep_fraction",
    }

    name: Literal["flow_grpo"] = "flow_grpo"
    timestep_fraction: float = Field(
        1.0, gt=0.0, le=1.0, description="The first int(sampling.num_steps * fraction) steps are trained."
    )

    def check(self, cfg) -> None:
        check_trained_steps(self.name, cfg.sampling.num_steps, self.timestep_fraction)

    def sample(self, sampling, velocity, init_noise, sigmas, generator, iteration):
        """Denoising reduction is T_train (here) vs T_eval (models/sampling.py `euler_sample`)."""
        g, num_steps = sampling.group_size, sigmas.numel() - 1
        x = initial_noise(init_noise, g, self.same_latent(sampling), generator)
        modes = [sde_mode(sampling.sde_kind, sigmas[i + 1].item()) for i in range(num_steps)]
        record = all_rows(modes, range(int(num_steps * self.timestep_fraction)), g)
        recorder = Recorder(keep_means=self.records_step_means)
        final = integrate(velocity, x, sigmas, modes, record, recorder, sampling, generator)
        return trajectory_rollout(self.name, sampling, velocity, recorder, final)


@register_algorithm
class FlowGRPOFast(PerStepAlgorithm):
    """Flow-GRPO-Fast: ODE, then an SDE window of `window_size` steps, then ODE; only the window is
    stochastic and trained. The window lies inside `window_range` = [lo, hi): its start is drawn uniformly
    from [lo, hi - w], as flow_grpo's pipeline_with_logprob_fast does (random.randint(lo, hi - w)).

    The reference draws one window per pipeline call, i.e. per sampling batch, whose images mix several
    prompts (and a prompt's images span several batches); here each group draws its own window from its
    seed, so a group is reproducible on any actor (see docs/fidelity.md)."""

    legacy_keys: ClassVar[dict[str, str]] = {
        **PerStepAlgorithm.legacy_keys, "sampling.window_size": "window_size", "sampling.window_range": "window_range",
    }

    name: Literal["flow_grpo_fast"] = "flow_grpo_fast"
    window_size: int = Field(2, ge=1, description="SDE window size w (steps).")
    window_range: tuple[int, int] = Field(
        (0, 5),
        description="The steps [lo, hi) the SDE window must lie in; its start is drawn uniformly from "
        "[lo, hi - window_size] (Flow-GRPO's sde_window_range).",
    )

    def check(self, cfg) -> None:
        num_steps = cfg.sampling.num_steps
        if self.window_size > num_steps:
            raise ValueError(f"algorithm.window_size ({self.window_size}) exceeds sampling.num_steps ({num_steps})")
        lo, hi = self.window_range
        if not (0 <= lo and lo + self.window_size <= hi <= num_steps):
            raise ValueError(
                f"algorithm.window_range {self.window_range} must hold the whole window of window_size "
                f"{self.window_size} steps: 0 <= lo, lo + window_size <= hi <= sampling.num_steps = {num_steps}"
            )

    def sample(self, sampling, velocity, init_noise, sigmas, generator, iteration):
        g = sampling.group_size
        x = initial_noise(init_noise, g, self.same_latent(sampling), generator)
        lo, hi = self.window_range
        start = int(torch.randint(lo, hi - self.window_size + 1, (1,), generator=generator,
                                  device=generator.device).item())
        modes = window_modes(sampling, sigmas, start, self.window_size)
        record = all_rows(modes, range(start, start + self.window_size), g)
        recorder = Recorder(keep_means=self.records_step_means)
        final = integrate(velocity, x, sigmas, modes, record, recorder, sampling, generator)
        return trajectory_rollout(self.name, sampling, velocity, recorder, final)

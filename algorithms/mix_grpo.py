"""MixGRPO (Li et al. 2025, arXiv 2507.21802) and MixGRPO-Flash: SDE inside a sliding window, Euler ODE
outside, from one shared initial noise; only the window is trained. Flash compresses the steps after the
window onto a coarser grid taken with DPM-Solver++(2M)."""

from __future__ import annotations

import bisect
import itertools
from typing import ClassVar, Literal

import torch
from pydantic import Field

from algorithms.base import register_algorithm
from algorithms.per_step import PerStepAlgorithm
from models.sampling import Recorder, all_rows, initial_noise, integrate, trajectory_rollout, window_modes
from models.schedule import compressed_tail
from models.seeding import derive_seed


def _check_window_args(iteration: int, num_steps: int, window_size: int, stride: int, every: int) -> None:
    for name, value, low in (
        ("iteration", iteration, 0),
        ("window_size", window_size, 1),
        ("stride", stride, 1),
        ("every", every, 1),
    ):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if window_size > num_steps - 1:
        raise ValueError(f"window_size ({window_size}) must be <= num_steps - 1 = {num_steps - 1}")


def mix_grpo_window_start(iteration: int, num_steps: int, window_size: int, stride: int, every: int) -> int:
    """Start l of MixGRPO's sliding SDE window [l, l + w) at an iteration (Li et al. 2025), its
    'progressive' sample_strategy.

    The window starts at 0 and moves by the stride s every tau (`every`) iterations; once it would
    pass the last trainable step it rolls back to 0. The final step to sigma = 0 is never trained
    (MixGRPO's `ignore_last`), so l takes the values 0, s, 2s, ... <= T - 1 - w. (MixGRPO's code
    lets l reach T - 2 and truncates the window there; here the window is always whole.)
    """
    _check_window_args(iteration, num_steps, window_size, stride, every)
    positions = (num_steps - 1 - window_size) // stride + 1
    return stride * ((iteration // every) % positions)


def mix_grpo_random_window_start(iteration: int, num_steps: int, window_size: int) -> int:
    """MixGRPO's 'random' sample_strategy (fastvideo/utils/grpo_states.py): a start drawn uniformly from
    [0, (T - 2) - w] each iteration (their max_timesteps = T - 2). The draw is a fixed function of the
    iteration, so every rollout actor samples the iteration's groups in the same window (the reference
    draws once per iteration, unseeded)."""
    _check_window_args(iteration, num_steps, window_size, 1, 1)
    if window_size > num_steps - 2:
        raise ValueError(f"window_size ({window_size}) must be <= num_steps - 2 = {num_steps - 2} for the random window")
    gen = torch.Generator().manual_seed(derive_seed("mix_grpo_random_window", iteration))
    return int(torch.randint(0, num_steps - 2 - window_size + 1, (1,), generator=gen).item())


def mix_grpo_decay_window_start(
    iteration: int, num_steps: int, window_size: int, stride: int, every: int, every_min: int | None = None
) -> int:
    """MixGRPO's 'decay' sample_strategy (fastvideo/utils/grpo_states.py): the progressive window, but
    it stays at position l for max(tau_min, int(tau (1 - p) + tau_min p)) iterations, p = l / (T - 2), so
    the later (less noisy) positions get fewer iterations; tau_min defaults to max(1, tau // 4), as theirs."""
    _check_window_args(iteration, num_steps, window_size, stride, every)
    low = max(1, every // 4) if every_min is None else every_min
    positions = range(0, num_steps - window_size, stride)  # 0, s, 2s, ... <= T - 1 - w
    durations = [max(low, int(every * (1 - pos / (num_steps - 2)) + low * pos / (num_steps - 2))) for pos in positions]
    ends = list(itertools.accumulate(durations))  # the cycle rolls back to 0 after the last position
    return positions[bisect.bisect_right(ends, iteration % ends[-1])]


def mix_grpo_flash_tail_steps(num_steps: int, after: int, ratio: float) -> int:
    """MixGRPO-Flash: the n = num_steps - after steps left after the window become the steps between
    int(max((n + 1) * ratio, 1)) grid points (MixGRPO's sampling_utils.run_sample_step: the count is
    taken from the last SDE index, one before `after`), i.e. one step fewer than points. At least one
    step is kept so that the grid reaches sigma = 0 (with one point the reference's grid stops short of 0)."""
    points = int(max((num_steps - after + 1) * ratio, 1))
    return max(1, points - 1)


def mix_grpo_flash_nfe(
    num_steps: int, group_size: int, window_start: int, window_size: int, ratio: float
) -> int:
    """MixGRPO-Flash NFE: G * (l + w + `mix_grpo_flash_tail_steps`), one call per step."""
    after = window_start + window_size
    return group_size * (after + mix_grpo_flash_tail_steps(num_steps, after, ratio))


# algorithm.window_strategy -> the window start at an iteration.
WINDOW_STRATEGIES = {
    "progressive": lambda a, it, t: mix_grpo_window_start(it, t, a.window_size, a.window_stride, a.window_every),
    "random": lambda a, it, t: mix_grpo_random_window_start(it, t, a.window_size),
    "decay": lambda a, it, t: mix_grpo_decay_window_start(
        it, t, a.window_size, a.window_stride, a.window_every, a.window_every_min
    ),
}


@register_algorithm
class MixGRPO(PerStepAlgorithm):
    """MixGRPO: SDE in a sliding window, ODE outside, only the window trained (+ Flash: DPM-Solver++ after it).

    SDE (Flow-GRPO's Eq. 9 in their code) inside the sliding window, Euler ODE outside, from one shared
    initial noise (their --init_same_noise); the window is trained.

    Flash variant: after the window the remaining n steps are compressed to the
    `mix_grpo_flash_tail_steps` DPM-Solver++(2M) steps of MixGRPO's re-interpolated grid
    (`compressed_tail`), the first of them second order from the last window step's data prediction.
    """

    default_same_latent: ClassVar[bool] = True
    legacy_keys: ClassVar[dict[str, str]] = {
        **PerStepAlgorithm.legacy_keys,
        **{f"sampling.{k}": k for k in ("window_size", "window_stride", "window_every", "window_strategy",
                                        "window_every_min", "flash", "flash_compress_ratio")},
    }

    name: Literal["mix_grpo"] = "mix_grpo"
    window_size: int = Field(2, ge=1, description="SDE window size w (steps).")
    window_stride: int = Field(1, ge=1, description="The window moves by this many steps (s).")
    window_every: int = Field(25, ge=1, description="The window moves every tau iterations.")
    window_strategy: Literal["progressive", "random", "decay"] = Field(
        "progressive",
        description="How the window moves (MixGRPO's sample_strategy): 'progressive' by the stride every tau "
        "iterations; 'random' a uniform start in [0, T - 2 - w] each iteration; 'decay' progressive, staying "
        "max(tau_min, int(tau (1 - p) + tau_min p)) iterations at position l, p = l / (T - 2).",
    )
    window_every_min: int | None = Field(
        None, ge=1, description="window_strategy 'decay': tau_min, the fewest iterations at a position; null = "
        "max(1, tau // 4).",
    )
    flash: bool = Field(False, description="MixGRPO-Flash: DPM-Solver++(2M) on a compressed grid after the window.")
    flash_compress_ratio: float = Field(
        0.4, gt=0.0, le=1.0,
        description="flash: the n steps after the window are re-interpolated onto int(max((n + 1) * ratio, 1)) "
        "points, at least one DPM-Solver++(2M) step (MixGRPO's dpm_post_compress_ratio).",
    )

    def check(self, cfg) -> None:
        num_steps = cfg.sampling.num_steps
        if self.window_strategy == "random" and self.window_size > num_steps - 2:
            raise ValueError(
                f"algorithm.window_size ({self.window_size}) must be <= sampling.num_steps - 2 = {num_steps - 2} "
                "for window_strategy 'random' (MixGRPO draws the start from [0, T - 2 - w])"
            )
        if self.window_size > num_steps - 1:
            # MixGRPO never trains the final step to sigma = 0 (its ignore_last), so the window lives in
            # steps [0, T - 1).
            raise ValueError(
                f"algorithm.window_size ({self.window_size}) must be <= sampling.num_steps - 1 = {num_steps - 1} "
                "for mix_grpo (the final step is never in the window)"
            )

    def sample(self, sampling, velocity, init_noise, sigmas, generator, iteration):
        g, num_steps, w = sampling.group_size, sigmas.numel() - 1, self.window_size
        x = initial_noise(init_noise, g, self.same_latent(sampling), generator)
        start = WINDOW_STRATEGIES[self.window_strategy](self, iteration, num_steps)
        modes, grid = window_modes(sampling, sigmas, start, w), sigmas
        if self.flash:
            after = start + w  # first step after the window
            n_post = mix_grpo_flash_tail_steps(num_steps, after, self.flash_compress_ratio)
            grid = torch.cat([sigmas[:after], compressed_tail(sigmas, after, n_post, sampling.shift)])
            modes = modes[:after] + ["dpm"] * n_post
        record = all_rows(modes, range(start, start + w), g)
        recorder = Recorder()
        final = integrate(velocity, x, grid, modes, record, recorder, sampling, generator)
        return trajectory_rollout(self.name, sampling, velocity, recorder, final)

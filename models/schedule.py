"""Sigma schedules (grids of noise levels from 1 to 0) and the sub-grids the strategies step on.

A schedule is a 1-D float32 tensor sigma_0 > sigma_1 > ... > sigma_T in [0, 1]; step i goes from
sigma_i to sigma_{i+1}. Sampling schedules end at 0 (data).
"""

from __future__ import annotations

import math

import torch


def check_sigmas(sigmas: torch.Tensor, name: str = "sigmas", *, ends_at_zero: bool = False) -> torch.Tensor:
    """Validate a schedule (1-D, >= 2 points, finite, in [0, 1], strictly decreasing) -> float32 copy."""
    s = torch.as_tensor(sigmas).detach().to("cpu", torch.float32)
    if s.ndim != 1 or s.numel() < 2:
        raise ValueError(f"{name} must be a 1-D schedule with at least 2 sigmas, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all() or s.min() < 0 or s.max() > 1:
        raise ValueError(f"{name} must lie in [0, 1] (sigma=1 is noise, 0 is data), got {s.tolist()}")
    if not torch.all(s[1:] < s[:-1]):
        raise ValueError(
            f"{name} must be strictly decreasing (steps go from noise to data), got {s.tolist()}"
        )
    if ends_at_zero and s[-1] != 0:
        raise ValueError(f"{name} must end at sigma=0 to produce data, ends at {s[-1].item()}")
    return s


def _check_grid_args(num_steps: int, shift: float) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a finite number > 0, got {shift!r}")


def time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's timestep shift (Esser et al. 2024): sigma = shift t / (1 + (shift - 1) t)."""
    return shift * t / (1 + (shift - 1) * t)


def inverse_time_shift(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """The t that `time_shift` maps to sigma: t = sigma / (shift - (shift - 1) sigma)."""
    return sigma / (shift - (shift - 1) * sigma)


def sd3_sigmas(num_steps: int, shift: float = 3.0) -> torch.Tensor:
    """The linear-shift grid: time_shift(linspace(1, 0, num_steps + 1)) -> [num_steps + 1], ending at 0.

    This is the grid the FLUX-based papers' code builds by hand (DanceGRPO, MixGRPO and G2RPO:
    `sd3_time_shift(shift, torch.linspace(1, 0, sampling_steps + 1))` in their train_*.py). It is NOT the
    grid of diffusers' FlowMatchEulerDiscreteScheduler, which SD3 pipelines and Flow-GRPO sample on:
    see `scheduler_sigmas`. Computed in float64 and rounded once.
    """
    _check_grid_args(num_steps, shift)
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return check_sigmas(time_shift(t, shift).float(), "sigmas")


def scheduler_sigmas(num_steps: int, shift: float = 3.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """The grid of diffusers' FlowMatchEulerDiscreteScheduler(shift).set_timesteps(num_steps), which
    StableDiffusion3Pipeline and Flow-GRPO (its pipeline_with_logprob) sample on -> [num_steps + 1].

    The scheduler's training sigmas run from 1 to sigma_min = time_shift(1 / N) (N = 1000 training
    timesteps); set_timesteps spaces num_steps points uniformly between them and shifts them again, then
    appends 0: time_shift(linspace(1, time_shift(1/N), num_steps)) + [0]. For T = 10 the last two steps
    start at 0.278 and 0.0089, where the linear-shift grid has 0.429 and 0.25.
    """
    _check_grid_args(num_steps, shift)
    sigma_min = time_shift(torch.tensor(1.0 / num_train_timesteps, dtype=torch.float64), shift)
    t = torch.linspace(1.0, sigma_min.item(), num_steps, dtype=torch.float64)
    grid = torch.cat([time_shift(t, shift), torch.zeros(1, dtype=torch.float64)])
    return check_sigmas(grid.float(), "sigmas")


SIGMA_SCHEDULES = {"linear": sd3_sigmas, "scheduler": scheduler_sigmas}


def sigma_schedule(name: str, num_steps: int, shift: float) -> torch.Tensor:
    """The named grid (`sampling.sigma_schedule`): 'linear' (`sd3_sigmas`) or 'scheduler' (`scheduler_sigmas`)."""
    if name not in SIGMA_SCHEDULES:
        raise ValueError(f"unknown sigma schedule {name!r}; expected one of {sorted(SIGMA_SCHEDULES)}")
    return SIGMA_SCHEDULES[name](num_steps, shift)


def resolution_shift_mu(
    image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5, max_shift: float = 1.15
) -> float:
    """FLUX.1's shift exponent mu, linear in the number of image tokens (diffusers' calculate_shift, with
    FluxPipeline's defaults: mu = 0.5 at 256 tokens (256 px), 1.15 at 4096 (1024 px))."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return base_shift + slope * (image_seq_len - base_seq_len)


def exponential_shift_sigmas(num_steps: int, mu: float) -> torch.Tensor:
    """FluxPipeline's resolution-dependent schedule: t uniform from 1 to 1/num_steps, then
    sigma = e^mu / (e^mu + 1/t - 1) (FlowMatchEulerDiscreteScheduler's exponential time_shift), then 0.

    Equals sd3_sigmas with shift = e^mu except for the grid of t (FluxPipeline stops t at 1/num_steps)."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    t = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
    sigmas = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
    return check_sigmas(torch.cat([sigmas.float(), torch.zeros(1)]), "sigmas", ends_at_zero=True)


def stretch_to_terminal(sigmas: torch.Tensor, terminal: float) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler's `shift_terminal` (from LTX-Video's rf.py): 1 - sigma rescaled so the
    last sigma before 0 equals `terminal` (Qwen-Image: 0.02), the first staying 1."""
    one_minus = 1 - sigmas
    return 1 - one_minus / (one_minus[-1] / (1 - terminal))


def resolution_sigmas(num_steps: int, image_seq_len: int, scheduler_config: dict) -> torch.Tensor:
    """The grid FluxPipeline and QwenImagePipeline sample on (sampling.shift_mode=resolution): t uniform from 1
    to 1/T, shifted with mu from the image token count (`resolution_shift_mu`, the scheduler config's
    base/max shift and sequence lengths; FLUX.1's defaults when a key is absent) by the config's
    `time_shift_type` ('exponential' e^mu / (e^mu + 1/t - 1), 'linear' mu / (mu + 1/t - 1)), stretched to its
    `shift_terminal` when set, then 0 (FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas, mu)). Computed in
    float64 and rounded once: without a terminal it is `exponential_shift_sigmas` bit for bit."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    c = scheduler_config
    mu = resolution_shift_mu(image_seq_len, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
    t = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
    exponential = c.get("time_shift_type", "exponential") == "exponential"
    sigmas = math.exp(mu) / (math.exp(mu) + (1 / t - 1)) if exponential else mu / (mu + (1 / t - 1))
    if c.get("shift_terminal"):
        sigmas = stretch_to_terminal(sigmas, c["shift_terminal"])
    return check_sigmas(torch.cat([sigmas.float(), torch.zeros(1)]), "sigmas", ends_at_zero=True)


def granular_grid(sigmas: torch.Tensor, k: int, granularity: int) -> torch.Tensor:
    """G2RPO's grid for a branch at step k and granularity lambda (Granular GRPO, 2025):
    sigma[:k+2] + sigma[k+2::lambda], with the last point set to 0.

    After the branch step sigma_k -> sigma_{k+1} the ODE continues on every lambda-th sigma. When the
    stride does not land on the final sigma_T = 0, the last strided point is replaced by 0: the
    reference sampler returns the data prediction x0_hat = x - sigma v at the last strided point,
    which is the Euler step to 0. So the tail costs ceil((T - k - 1) / lambda) evaluations.
    """
    num_steps = sigmas.numel() - 1
    if not 0 <= k <= num_steps - 2:
        raise ValueError(f"k (a G2RPO branch step) must lie in [0, T - 2] = [0, {num_steps - 2}], got {k}")
    if granularity < 1:
        raise ValueError(f"granularity (lambda) must be >= 1, got {granularity}")
    tail = sigmas[k + 2 :: granularity].clone()
    tail[-1] = 0.0
    return torch.cat([sigmas[: k + 2], tail])


def compressed_tail(sigmas: torch.Tensor, start: int, num_steps: int, shift: float) -> torch.Tensor:
    """MixGRPO-Flash's compressed grid after the SDE window (Li et al. 2025): from sigma_start to 0 in
    `num_steps` steps, re-interpolated uniformly in the unshifted time t and shifted again.

    MixGRPO's sampling_utils.run_sample_step takes t_start = linspace(1, 0, T + 1)[start] and builds
    time_shift(linspace(t_start, 0, points)); here t_start = inverse_time_shift(sigma_start), the same
    number on the linear-shift grid, and the first point is sigma_start itself (no rounding drift).
    """
    total = sigmas.numel() - 1
    if not 0 <= start < total:
        raise ValueError(f"start must lie in [0, {total - 1}], got {start}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    t_start = inverse_time_shift(sigmas[start].double(), shift).item()
    tail = time_shift(torch.linspace(t_start, 0.0, num_steps + 1, dtype=torch.float64), shift).float()
    tail[0] = sigmas[start]
    return check_sigmas(tail, "compressed tail")

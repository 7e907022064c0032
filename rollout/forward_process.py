"""The forward-process family's rollout (DiffusionNFT, AWM): G final images per prompt from any solver.

DiffusionNFT (Zheng et al. 2025, arXiv 2509.16117) and Advantage Weighted Matching (Xue et al. 2025,
arXiv 2509.25050) train on the clean final samples only: the learner noises each x0 again at a few
timesteps (learner/forward_process.py), so nothing per step is recorded and any solver may sample.
`sampling.solver` picks it: 'ode' (Euler), 'dpm' (DPM-Solver++(2M), NVlabs' `solver="dpm2"`
default) or 'sde' (the configured SDE step, for exploration). The record carries the final latents
(x0 for the learner) and no transitions; the prompt travels with the group.
"""

from __future__ import annotations

from rollout.strategies import (
    _initial_noise,
    _integrate,
    _Recorder,
    _sde_mode,
    _trajectory_rollout,
    register_strategy,
)

# Step modes of `_integrate` per solver; 'sde' steps are taken with the configured SDE but never recorded.
SOLVERS = ("ode", "dpm", "sde")


@register_strategy("forward_process")
def forward_process(cfg, velocity, init_noise, sigmas, generator, iteration):
    """G independent trajectories with `cfg.solver`, keeping only the final latents (x0)."""
    g, num_steps = cfg.group_size, sigmas.numel() - 1
    x = _initial_noise(init_noise, g, bool(cfg.same_latent), generator)
    if cfg.solver == "sde":
        modes = [_sde_mode(cfg.sde_kind, sigmas[i + 1].item()) for i in range(num_steps)]
    else:
        modes = [cfg.solver] * num_steps
    recorder = _Recorder()  # stays empty: the learner needs x0, not transitions
    final = _integrate(velocity, x, sigmas, modes, {}, recorder, cfg, generator)
    return _trajectory_rollout("forward_process", cfg, velocity, recorder, final)
